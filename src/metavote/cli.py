"""The ``metavote`` command: parse arguments, call a library function, print its result.

Errors a user can cause are :class:`metavote.errors.MetavoteError`; they are printed as one
line on stderr (no traceback) and the exit status is 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError, MetavoteError, one_line


class ZooBuildFailed(MetavoteError):
    """Some tasks of a build failed (they are recorded; a re-run retries them)."""


def _json_arg(text: str | None) -> dict | None:
    """A JSON object given inline or as a file's path."""
    import json

    if text is None:
        return None
    try:
        value = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    except (json.JSONDecodeError, OSError) as e:
        raise ConfigError(f"{text!r} is neither a JSON file nor inline JSON ({one_line(e)})") from e
    if not isinstance(value, dict):
        raise ConfigError(f"{text!r} is JSON but not an object")
    return value


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


FROM_CLASSES = "comma-separated classes: draw the tasks from these only (a zoo of one domain; default: every class)"


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="data root (default: $METAVOTE_DATA, then ../shared/data)")
    p.add_argument("--dataset", default="cifar100", help="dataset name, or the path of an image folder (default: cifar100)")


def _add_threads(p: argparse.ArgumentParser, device: bool = True) -> None:
    """``--threads`` and (for a command that can run its model off the CPU) ``--device``."""
    p.add_argument("--threads", type=int, help="torch threads (default: $METAVOTE_THREADS, else the cores other processes leave free)")
    if device:
        p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")


# ----------------------------------------------------------------------------- commands


def cmd_pretrain(args: argparse.Namespace) -> None:
    from .data import load_dataset
    from .pretrain import PretrainConfig, pretrain
    from .training import select_device, set_threads

    set_threads(args.threads)
    dataset = load_dataset(args.dataset, args.data)
    if args.classes or args.num_classes or args.max_per_class:
        classes = _csv(args.classes) if args.classes else dataset.classes[: args.num_classes] if args.num_classes else None
        dataset = dataset.subset(classes, args.max_per_class)
    config = PretrainConfig(
        method=args.method, arch="hf" if args.hf_config else args.arch, width=args.width, hf_config=_json_arg(args.hf_config),
        epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else (0.1 if args.method == "supervised" else 0.05),
        weight_decay=args.weight_decay, schedule=args.schedule, cutout=args.cutout, seed=args.seed,
    )
    default = f"runs/hf_{config.hf_config.get('model_type')}_{args.method}" if args.hf_config else f"runs/{args.arch}_w{args.width:g}_{args.method}.safetensors"
    out = Path(args.out or default)
    result = pretrain(dataset, out, config, resume=not args.fresh, progress=not args.quiet, device=select_device(args.device))
    if result.resumed_from_epoch:
        print(f"resumed after epoch {result.resumed_from_epoch}")
    metric = "test top-1" if args.method == "supervised" else "k-NN top-1"
    print(f"wrote {result.path} ({metric} {result.accuracy:.2%} on {len(dataset.test_labels)} test images)")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .data import load_dataset
    from .models import head_rows_for, load_backbone, replace_head
    from .training import evaluate, select_device, set_threads

    set_threads(args.threads)
    dataset = load_dataset(args.dataset, args.data)
    model, meta = load_backbone(args.weights, dataset=dataset, image_size=args.image_size)
    dataset = dataset.resized(model.input_size)
    model.to(select_device(args.device))
    if args.classes:
        task = dataset.task(_csv(args.classes))
        rows = head_rows_for(meta["classes"], task.classes)
        if rows is None:
            raise ConfigError("the backbone's head does not cover these classes; prune or fine-tune for the task instead")
        replace_head(model, task.n_way, rows)
        data = dataset.load_task(task)
        acc, n, what = evaluate(model, data.test_images, data.test_labels), len(data.test_labels), f"task {task}"
    else:
        if model.num_classes != dataset.num_classes:
            raise ConfigError(f"the backbone has a {model.num_classes}-way head, the dataset {dataset.num_classes} classes")
        acc, n, what = evaluate(model, dataset.test_images, dataset.test_labels), len(dataset.test_labels), dataset.name
    print(f"top-1 {acc:.2%} on {n} test images of {what}")


def cmd_backbones(args: argparse.Namespace) -> None:
    from .models import list_backbones

    rows = list_backbones()
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        size = f"{r['image_size']} px" if r["image_size"] else "its own size"
        state = f"  (not installed: needs {r['missing']})" if r["missing"] else ""
        print(f"{r['name']:<{width}}  {r['summary']}; {size} by default; from {r['source']}{state}")
    print("any other: --backbone py:MODULE:FUNCTION (a function returning a classifier), a weights file, or a Hugging Face folder; "
          "--image-size sets the input size")


def cmd_tasks(args: argparse.Namespace) -> None:
    from .data import load_dataset, sample_tasks

    dataset = load_dataset(args.dataset, args.data)
    for task in sample_tasks(dataset, args.n_way, args.count, args.seed, classes=_csv(args.classes) if args.classes else None):
        print(task)


def cmd_data_download(args: argparse.Namespace) -> None:
    from .data import download_cifar100

    if args.name != "cifar100":
        raise ConfigError(f"only cifar100 can be downloaded; put other datasets in an image folder (got {args.name!r})")
    if not args.data:
        raise ConfigError("--data DIR is required: where to put the dataset")
    print(f"CIFAR-100 ready in {download_cifar100(args.data)}")


def cmd_data_info(args: argparse.Namespace) -> None:
    from .data import load_dataset

    ds = load_dataset(args.dataset, args.data)
    print(f"{ds.name}: {ds.num_classes} classes, {len(ds.train_labels)} train / {len(ds.test_labels)} test images of {ds.train_images.shape[1]}x{ds.train_images.shape[2]}")
    print("classes: " + ", ".join(ds.classes))


def cmd_zoo_build(args: argparse.Namespace) -> None:
    from .data import load_dataset, sample_tasks
    from .methods import conventional_method, create_method
    from .models import load_backbone, locate_backbone
    from .profiles import get_profile
    from .training import select_device
    from .zoo import build_zoo

    budget = {"ratio": args.ratio, "iterations": args.iterations, "lr": args.lr, "batch_size": args.batch_size, "importance": args.importance}
    profile = get_profile(args.profile)
    backbone = locate_backbone(args.backbone or profile.backbone)
    image_size = args.image_size or profile.image_size
    if args.method is None:  # the profile's conventional method, or the one this model can run
        model, _ = load_backbone(backbone, image_size=image_size)
        method, why = conventional_method(model, profile, **budget)
        print(f"method: {method.key} ({why}; --method names another)")
    else:
        method = create_method(args.method, **profile.settings(args.method, **budget))
    dataset = load_dataset(args.dataset, args.data)
    tasks = sample_tasks(dataset, args.n_way, args.tasks, args.seed, classes=_csv(args.classes) if args.classes else None)
    print(f"zoo {args.zoo}: {len(tasks)} {args.n_way}-way tasks of {dataset.name}, {method.key} {method.settings()}, backbone {backbone}")
    report = build_zoo(args.zoo, tasks, backbone, method, args.dataset, args.data, args.workers, args.executor, args.address, not args.quiet,
                       select_device(args.device), args.threads, args.retry_failed, image_size=image_size)
    print(f"built {len(report.done)}, skipped {len(report.skipped)} already done"
          + (f" and {len(report.by_others)} built by other builders" if report.by_others else "")
          + f", failed {len(report.failed)} in {report.seconds / 60:.1f} min")
    if report.failed_before:
        print(f"left {len(report.failed_before)} task(s) that failed in an earlier build; pass --retry-failed to retry them")
    if report.failed:
        raise ZooBuildFailed(f"{len(report.failed)} task(s) failed (see `metavote zoo ls --zoo {args.zoo} --status failed`); "
                             "re-run with --retry-failed to retry them")


def cmd_zoo_ls(args: argparse.Namespace) -> None:
    from .zoo import Zoo

    with Zoo(args.zoo) as zoo:
        if args.status == "running":
            claims = zoo.claims()
            print(f"zoo {args.zoo}: {len(claims)} task(s) being built")
            print(f"{'record':<22} {'host':<20} {'pid':>7} {'running':>8} {'last beat':>9} {'lease left':>10}")
            now = time.time()
            for c in claims:
                if args.method is None or c.record_id.endswith(f".{args.method}"):
                    print(f"{c.record_id:<22} {c.host[:20]:<20} {c.pid:>7} {now - c.started:>7.0f}s {now - c.heartbeat:>8.0f}s "
                          f"{c.expires - now:>9.0f}s")
            return
        records = zoo.records(method=args.method, status=None if args.status == "any" else args.status)
        meta = zoo.meta
        backbone = zoo.describe()
        layers = {z.root: f"L{i}" for i, z in enumerate(zoo.layers, 1)}
        state = f"read-only: {zoo.read_only}" if zoo.read_only else ""
    print(f"zoo {args.zoo}: backbone {backbone} ({str(meta.get('fingerprint'))[:12]}), {len(records)} record(s)" + (f" ({state})" if state else ""))
    for root, name in layers.items():
        print(f"  layered on {name} = {root} (read-only)")
    origin = (lambda r: layers.get(r.origin, "own")) if layers else None
    print(f"{'record':<22} {'status':<7} {'acc':>6} {'TFLOPs':>7} {'secs':>6}  " + ("from  " if origin else "") + "classes")
    lines = []
    for r in records:
        acc = f"{r.accuracy:.2%}" if r.accuracy is not None else "-"
        tf = f"{r.flops / 1e12:.2f}" if r.flops is not None else "-"
        secs = f"{r.seconds:.0f}" if r.seconds is not None else "-"
        lines.append(f"{r.record_id:<22} {r.status:<7} {acc:>6} {tf:>7} {secs:>6}  " + (f"{origin(r):<5} " if origin else "")
                     + ", ".join(r.task.classes))
    print("\n".join(lines))


def cmd_zoo_show(args: argparse.Namespace) -> None:
    from .models import count_parameters
    from .zoo import Zoo

    with Zoo(args.zoo) as zoo:
        r = zoo.get(args.record, args.method)
        print(f"record {r.record_id} ({r.status})\n  task      {r.task}\n  method    {r.method} {r.params}")
        if r.status != "ok":
            print(f"  error     {r.error}")
            return
        model, subnet = zoo.load(r)
        print(f"  accuracy  {r.accuracy:.2%}\n  training  {r.flops / 1e12:.3f} TFLOPs, {r.seconds:.1f} s")
        print(f"  size      {count_parameters(model):,} parameters, {subnet.kept_fraction():.1%} of units kept")
        for name, idx in subnet.kept.items():
            print(f"  {name:<16} {len(idx):>4}/{subnet.sizes[name]:<4} {' '.join(map(str, idx[:12]))}{' ...' if len(idx) > 12 else ''}")


def cmd_zoo_refine(args: argparse.Namespace) -> None:
    from .training import set_threads
    from .zoo import Zoo, refine_zoo, weak_records, zoo_budget

    set_threads(args.threads)
    if args.nice:
        os.nice(19)  # idle time: any other work on the machine comes first
    with Zoo(args.zoo) as zoo:
        below = args.below if args.below is not None else zoo_budget(zoo)
        weak = len(weak_records(zoo, below))
    print(f"zoo {args.zoo}: {weak} record(s) trained for fewer than {below} steps" + (f"; refining at most {args.limit}" if args.limit else ""))
    report = refine_zoo(args.zoo, below, args.limit, args.minutes, progress=not args.quiet)
    for r in report.refined:
        print(f"  {r['record']:<22} {r['budget_before']:>5} -> {r['budget']:<5} steps  {r['before']:.2%} -> {r['after']:.2%}  "
              f"({r['tflops']:.2f} TFLOPs, {r['seconds']:.0f} s)")
    print(f"refined {len(report.refined)}, {len(report.busy)} held by another refiner or changed meanwhile, {report.left} left for a later "
          f"run, {report.cleaned} superseded file(s) deleted, in {report.seconds / 60:.1f} min")


def _size(n: int) -> str:
    return f"{n:,} bytes" + (f" ({n / 2**20:.1f} MiB)" if n >= 2**20 else "")


def cmd_zoo_pack(args: argparse.Namespace) -> None:
    from .zoo import pack_zoo, read_manifest

    out = pack_zoo(args.zoo, args.out)
    manifest = read_manifest(out)
    records = manifest["records"]
    print(f"packed {len(records)} record(s) of zoo {args.zoo} ({sum(r['size'] for r in records):,} bytes of weights) into {out}: "
          f"{_size(out.stat().st_size)}, backbone {manifest['backbone']['config']['arch']} {manifest['backbone']['fingerprint'][:12]}")


def cmd_zoo_unpack(args: argparse.Namespace) -> None:
    from .zoo import unpack_bundle

    fingerprint = None
    if args.backbone:
        from .models import load_backbone, locate_backbone

        fingerprint = load_backbone(locate_backbone(args.backbone))[1]["fingerprint"]
    report = unpack_bundle(args.bundle, args.zoo, fingerprint, args.replace)
    fp = report.fingerprint[:12]
    if not report.merged:
        print(f"unpacked {len(report.added)} record(s) ({_size(report.bytes)}) of backbone {fp} into the new zoo {report.path}")
        return
    print(f"merged bundle {args.bundle} into zoo {report.path} (backbone {fp}): added {len(report.added)} record(s), "
          f"skipped {len(report.skipped)} it already held; checked {_size(report.bytes)}")
    if report.kept:
        print(f"kept the zoo's own version of {len(report.kept)} record(s) that differ from the bundle's "
              f"({', '.join(report.kept[:5])}{' ...' if len(report.kept) > 5 else ''}); pass --replace to take the bundle's")


def _zoo_context(args: argparse.Namespace, need_backbone: bool):
    """The zoo, its dataset and (for the embedding) its backbone."""
    from .experiments import context, zoo_dataset
    from .training import select_device
    from .zoo import Zoo

    if need_backbone:
        ctx = context(args.zoo, args.data, args.backbone, args.device, args.dataset)
        return ctx.zoo, ctx.dataset, ctx.backbone
    zoo = Zoo(args.zoo, device=select_device(args.device))
    return zoo, zoo_dataset(zoo, args.dataset, args.data), None


def cmd_similarity(args: argparse.Namespace) -> None:
    from .similarity import make_similarity, nearest
    from .training import set_threads

    set_threads(args.threads)
    zoo, dataset, backbone = _zoo_context(args, args.metric == "embedding" or args.preselect is not None)
    if bool(args.classes) == bool(args.task):
        raise ConfigError("give the target as --classes a,b,c or as --task ID (a zoo record's task)")
    task = dataset.task(_csv(args.classes)) if args.classes else zoo.get(args.task, zoo.source_method).task
    target = dataset.load_task(task)
    measure = make_similarity(args.metric, args.rule, backbone, dataset)
    pre = make_similarity("embedding", backbone=backbone, dataset=dataset) if args.preselect is not None else None
    ranked = nearest(zoo, target, args.k, measure, pre, args.preselect or 20)
    print(f"{args.k} nearest zoo tasks to {task} by {args.metric}" + (f" (pre-selected top {args.preselect} by embedding)" if pre else ""))
    for rank, (record, score) in enumerate(ranked, 1):
        print(f"{rank:>3}  {record.record_id:<20} {score:>8.4f}  {', '.join(record.task.classes)}")


def cmd_study_overlap(args: argparse.Namespace) -> None:
    from .similarity import make_similarity
    from .study import overlap_study, similarity_matrix, write_overlap
    from .training import set_threads

    set_threads(args.threads)
    zoo, dataset, backbone = _zoo_context(args, args.metric == "embedding")
    records = zoo.records(method=zoo.source_method)
    measure = make_similarity(args.metric, args.rule, backbone, dataset)
    sim = similarity_matrix(zoo, records, dataset, measure, progress=not args.quiet)
    name = args.metric if args.metric != "wordnet" or args.rule == "best_match" else f"wordnet-{args.rule}"
    result = overlap_study(zoo, dataset, sim, name, args.groups, records)
    files = write_overlap(result, args.out)
    print(f"overlap study of {result.targets} tasks by {name}: mean over layers of IoU(group 1) - IoU(group {args.groups}) = {result.gap.mean():.3f}")
    print("  layer            " + "  ".join(f"g{g + 1:<5}" for g in range(args.groups)) + "  chance  gap")
    for l, layer in enumerate(result.layers):
        print(f"  {layer:<16} " + "  ".join(f"{result.iou[g, l]:.3f} " for g in range(args.groups)) + f"  {result.chance[l]:.3f}  {result.gap[l]:+.3f}")
    print("wrote " + ", ".join(map(str, files)))


def cmd_data_fashion_mnist(args: argparse.Namespace) -> None:
    from .data import convert_fashion_mnist

    source = {"source": args.source} if args.source else {}
    out = convert_fashion_mnist(args.out, train_per_class=args.train_per_class, test_per_class=args.test_per_class, **source)
    print(f"wrote {out} (train/ and val/, 10 classes, 32x32 RGB); use it as --target-dataset {out}")


def cmd_prune(args: argparse.Namespace) -> None:
    from .experiments import check_settings_used, context, default_method, prune, with_layer
    from .methods import get_method_class
    from .models import count_parameters
    from .training import set_threads

    set_threads(args.threads)
    if not args.classes and args.dataset is None:
        raise ConfigError("name the task: --classes a,b,c (of the zoo's dataset), or --dataset FOLDER for all classes of an image folder")
    if args.out is not None:
        _check_model_out(args.out)
    ctx = context(args.zoo, args.data, args.backbone, args.device, args.dataset, read_only=args.zoo_read_only or None)
    if not args.no_save and (ctx.zoo.read_only or args.save_to):
        ctx = with_layer(ctx, args.save_to)
        print(f"note: zoo {args.zoo} is read-only ({ctx.zoo.layers[0].read_only}); new records go to the layer {ctx.zoo.root} on it"
              if not args.save_to else f"note: new records go to {ctx.zoo.root}, layered on {args.zoo}")
    classes = _csv(args.classes) if args.classes else list(ctx.dataset.classes)
    own = {"neighbours": args.neighbours, "similarity": args.similarity, "align": args.align,  # MVP's settings, and any method's align
           "zoo_method": args.zoo_method, "quality": args.quality, "layout": args.layout}
    if args.method == "auto":
        from .profiles import get_profile

        args.method, why = default_method(ctx.zoo, args.ratio if args.ratio is not None else get_profile(args.profile).ratio,
                                          args.align or 1)
        given = {k for k, v in (own | {"temperature": args.temperature}).items() if v is not None}
        check_settings_used(args.method, given, chosen=True)
        other = "--method nearest keeps the nearest record as it is" if args.method == "mvp" else "--method mvp votes as the paper does"
        print(f"method: {args.method} ({why}; {other})")
    task = ctx.dataset.task(classes)
    same = [r for r in ctx.zoo.records() if r.task.id == task.id]
    if same:
        print(f"note: the zoo already holds this task ({', '.join(r.record_id for r in same)}); it is left out of its own neighbours")
    result, task = prune(ctx, classes, args.method, args.profile, save=not args.no_save, progress=not args.quiet, out=args.out,
                         **{k: v for k, v in (_budget(args) | own).items() if v is not None})
    print(f"{result.method} on {task}: test accuracy {result.accuracy:.2%}")
    print(f"  {result.costs.iterations} iterations, {result.costs.tflops:.3f} training TFLOPs, {result.costs.seconds:.1f} s")
    if "neighbour_scores" in result.params:
        print(f"  neighbours ({result.params['similarity']}, {result.params['search_seconds']:.1f} s): " + ", ".join(
            f"{t} ({s:.3f})" for t, s in zip(result.params["neighbours"], result.params["neighbour_scores"])) + f"; head: {result.params['head']}")
    print(f"  {count_parameters(result.model):,} parameters, {result.subnet.kept_fraction():.1%} of units kept")
    if "tokens_kept" in result.params:
        print(f"  tokens kept after each block's attention: {result.params['tokens_kept']}")
    if args.out:
        print(f"  wrote the standalone model {args.out} (load it with metavote.load_pruned, or `metavote export --model {args.out} --onnx OUT`)")
    if args.no_save:
        return
    if get_method_class(result.method).builds_zoo:
        print(f"  saved to zoo {ctx.zoo.root} as {task.id}.{result.method}")
    else:
        print(f"  not saved: {result.method} keeps every unit, so the zoo has nothing to record")


def _align(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of channels or auto, not {value!r}") from None


def _check_model_out(path: str) -> None:
    from .files import check_output

    if Path(path).suffix != ".safetensors":
        raise ConfigError(f"--out must name a .safetensors file, got {path}")
    check_output(path, "--out")


def _budget(args: argparse.Namespace) -> dict:
    return {"ratio": args.ratio, "iterations": args.iterations, "lr": args.lr, "batch_size": args.batch_size, "temperature": args.temperature}


def cmd_bench(args: argparse.Namespace) -> None:
    from .experiments import context, run_bench
    from .training import set_threads

    set_threads(args.threads)
    _, table = run_bench(context(args.zoo, args.data, args.backbone, args.device, args.dataset), args.profile, args.tasks, args.seed, args.out, not args.quiet,
                         _csv(args.also) if args.also else (), not args.no_baselines, not args.no_peers, **_budget(args))
    print(table)
    print(f"wrote {Path(args.out) / 'summary.md'}, summary.csv and rows.jsonl")


def cmd_ablate(args: argparse.Namespace) -> None:
    from .experiments import context, run_ablation
    from .training import set_threads

    set_threads(args.threads)
    _, table, figure = run_ablation(context(args.zoo, args.data, args.backbone, args.device, args.dataset), args.name, args.profile, args.tasks, args.seed,
                                    args.out, not args.quiet, args.target_dataset, args.other_zoo, **_budget(args))
    print(table)
    print(f"wrote {figure} and {Path(args.out) / args.name}/summary.md")


def cmd_export(args: argparse.Namespace) -> None:
    from .deploy import CALIBRATION_IMAGES, export_bf16, export_hf, export_int8, export_onnx, export_record
    from .files import check_output
    from .training import set_threads
    from .zoo import Zoo

    set_threads(args.threads)
    if bool(args.zoo) == bool(args.model):
        raise ConfigError("give --zoo Z RECORD --out FILE.safetensors (a standalone model), or --model FILE.safetensors --onnx OUT.onnx")
    if args.int8 and args.precision not in (None, "int8"):
        raise ConfigError(f"--int8 is --precision int8, not {args.precision}; give one of them")
    precision = "int8" if args.int8 else args.precision
    if precision not in ("int8", "bf16") and args.data is not None:
        raise ConfigError("--data goes with --precision int8 or bf16 (the images such an export is scored on)")
    if precision != "int8" and args.calibration is not None:
        raise ConfigError("--calibration goes with --precision int8 (the images an int8 export is calibrated on)")
    if precision and not args.onnx:
        raise ConfigError(f"--precision {precision} goes with --model FILE.safetensors --onnx OUT.onnx: it is how an ONNX file runs")
    if args.zoo:
        if not args.record or not args.out:
            raise ConfigError("export from a zoo needs the record id (or task id) and --out FILE.safetensors")
        _check_model_out(args.out)
        with Zoo(args.zoo) as zoo:
            path = export_record(zoo, args.record, args.out, args.method)
        print(f"wrote the standalone model {path}")
        return
    if bool(args.onnx) == bool(args.hf_folder):
        raise ConfigError("--model needs --onnx OUT.onnx or --hf-folder DIR")
    if args.hf_folder:
        check_output(args.hf_folder, "--hf-folder", folder=True)
        print(f"wrote {export_hf(args.model, args.hf_folder)}, a save_pretrained folder (transformers loads it; checked against the model)")
        return
    check_output(args.onnx, "--onnx")
    if precision == "int8":
        report = export_int8(args.model, args.onnx, args.data, CALIBRATION_IMAGES if args.calibration is None else args.calibration)
        print(f"wrote {args.onnx}, int8 (calibrated on {report.calibration_images} training images); {report.summary()}")
        return
    if precision == "bf16":
        report = export_bf16(args.model, args.onnx, args.data)
        print(f"wrote {args.onnx}, fp32 weights run by OpenVINO in bf16 (predict --runtime openvino); {report.summary()}")
        return
    agreement = export_onnx(args.model, args.onnx)
    print(f"wrote {args.onnx}; ONNX Runtime and PyTorch agree on 16 check images: {agreement}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .deploy import predict
    from .training import set_threads

    set_threads(args.threads)
    for image, top in zip(args.images, predict(args.model, args.images, args.top_k, args.device, args.runtime, args.precision)):
        print(f"{image}: " + ", ".join(f"{name} {p:.1%}" for name, p in top))


def cmd_demo(args: argparse.Namespace) -> None:
    from .experiments import demo

    demo(data=args.data, backbone=args.backbone, out=args.out, zoo=args.zoo, threads=args.threads, device=args.device)


# ----------------------------------------------------------------------------- parser


BACKBONE_HELP = ("pre-trained backbone: a weights file, a Hugging Face folder, a name from `metavote backbones` (efficientnet-lite0) "
                 "or py:MODULE:FUNCTION (default: the profile's, else ../shared/pretrained/cifar100_resnet18_w0.5.safetensors)")
IMAGE_SIZE_HELP = "input size in pixels the backbone runs at; images are resized to it once (default: the profile's, else the model's own)"


def build_parser() -> argparse.ArgumentParser:
    """The parser; it imports nothing heavy (no torch), so ``--help`` is instant."""
    from .names import METHOD_KEYS, PRECISIONS, RUNTIMES
    from .profiles import PROFILES

    methods, profiles = sorted(METHOD_KEYS), list(PROFILES)
    parser = argparse.ArgumentParser(prog="metavote", description="Meta-Vote Pruning of pre-trained models for downstream tasks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("pretrain", help="pre-train a backbone (supervised or SimSiam); resumable")
    _add_data(p)
    p.add_argument("--method", choices=["supervised", "simsiam"], default="supervised")
    p.add_argument("--arch", default="cifar_resnet18", choices=["cifar_resnet18", "resnet50"])
    p.add_argument("--width", type=float, default=0.5, help="channel width multiplier (default 0.5)")
    p.add_argument("--hf-config", help="a Hugging Face image classifier's config (a JSON file or inline JSON with its model_type) "
                                       "instead of --arch: trained as a traced model, written as a save_pretrained folder (needs the hf extra)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, help="peak learning rate (default 0.1 supervised, 0.05·batch/256 SimSiam)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=["onecycle", "cosine"], default="onecycle")
    p.add_argument("--cutout", type=int, default=16, help="cutout square size in pixels, 0 to disable (supervised)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", help="comma-separated subset of classes to train on")
    p.add_argument("--num-classes", type=int, help="train on the first K classes only (a quick run)")
    p.add_argument("--max-per-class", type=int, help="at most this many training images per class (a quick run)")
    p.add_argument("--out", help="output .safetensors, or folder with --hf-config (default runs/<arch>_w<width>_<method>.safetensors)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing resume checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("evaluate", help="top-1 of a backbone on a dataset's test split, or on a task of its classes")
    _add_data(p)
    p.add_argument("--weights", required=True, help="a .safetensors (or .pt state_dict) backbone, a Hugging Face folder or a backbone name")
    p.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    p.add_argument("--classes", help="comma-separated classes: evaluate on that task with the head's rows")
    _add_threads(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("backbones", help="the pre-trained backbones --backbone can name (efficientnet-lite0, ...), and whether they are installed")
    p.set_defaults(func=cmd_backbones)
    p = sub.add_parser("tasks", help="draw N-way tasks (seeded) and print their ids and classes")
    _add_data(p)
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", help=FROM_CLASSES)
    p.set_defaults(func=cmd_tasks)

    data = sub.add_parser("data", help="download or describe datasets").add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = data.add_parser("download", help="download and verify CIFAR-100 (needs internet)")
    p.add_argument("name", choices=["cifar100"])
    p.add_argument("--data", help="where to put it")
    p.set_defaults(func=cmd_data_download)
    p = data.add_parser("fashion-mnist", help="write Fashion-MNIST (Debian's dataset-fashion-mnist) as a 32x32 RGB image folder")
    p.add_argument("--out", required=True, help="the image folder to write")
    p.add_argument("--source", help="folder of the four IDX .gz files (default: Debian's /usr/share/datasets/fashion-mnist)")
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--test-per-class", type=int, default=100)
    p.set_defaults(func=cmd_data_fashion_mnist)
    p = data.add_parser("info", help="class count, split sizes and class names of a dataset")
    _add_data(p)
    p.set_defaults(func=cmd_data_info)

    zoo = sub.add_parser("zoo", help="build and inspect a zoo of pruned models").add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    p = zoo.add_parser("build", help="prune T sampled tasks into a zoo (IFP by default; parallel, resumable)")
    _add_data(p)
    p.add_argument("--zoo", required=True, help="zoo folder (created if new)")
    p.add_argument("--backbone", help=BACKBONE_HELP)
    p.add_argument("--image-size", type=int, help=IMAGE_SIZE_HELP)
    p.add_argument("--tasks", type=int, default=100, help="number of tasks T (default 100)")
    p.add_argument("--n-way", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="task sampling seed")
    p.add_argument("--classes", help=FROM_CLASSES)
    p.add_argument("--method", choices=methods, help="the pruning method of every record (default: the profile's conventional "
                   "method, IFP or AHNP, or the first of AHNP, IFP and IFP with magnitude importance the model can run)")
    p.add_argument("--profile", choices=profiles, default="paper",
                   help="budget: 'paper' (IFP r 0.9, J 1000, batch 128), 'cpu' (IFP r 0.8, J 200, batch 64), 'vit-paper' or "
                        "'vit-cpu' (AHNP), 'lite0-cpu' (EfficientNet-Lite0 at 96 px: its backbone and size by default; Torch-Pruning Taylor r 0.8, J 200)")
    p.add_argument("--ratio", type=float, help="pruning ratio r (overrides the profile)")
    p.add_argument("--iterations", type=int, help="the method's iterations (overrides the profile)")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--importance", choices=["activation", "taylor", "random", "magnitude"], help="IFP's criterion (default activation)")
    p.add_argument("--workers", type=int, help="parallel worker processes (default 2 on the CPU, 1 on a GPU)")
    p.add_argument("--threads", type=int,
                   help="torch threads per worker (default: the cores this process may use, divided among the workers)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--address", help="Ray cluster address (with --executor ray)")
    p.add_argument("--retry-failed", action="store_true", help="retry tasks that failed in an earlier build (default: leave them)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_zoo_build)
    p = zoo.add_parser("ls", help="list a zoo's records")
    p.add_argument("--zoo", required=True)
    p.add_argument("--method")
    p.add_argument("--status", choices=["ok", "failed", "any", "running"], default="any",
                   help="records by status, or 'running': the tasks builders hold claims on now")
    p.set_defaults(func=cmd_zoo_ls)
    p = zoo.add_parser("show", help="describe one record: task, costs, kept units per group")
    p.add_argument("--zoo", required=True)
    p.add_argument("record", help="record id or task id")
    p.add_argument("--method")
    p.set_defaults(func=cmd_zoo_show)
    p = zoo.add_parser("refine", help="train the zoo's weak records (e.g. prune --save-to's J = 20 ones) up to the zoo's budget, "
                       "weakest first; resumable, never blocks readers")
    p.add_argument("--zoo", required=True, help="a writable zoo (a layer made by prune --save-to: its own records, not the read-only ones)")
    p.add_argument("--below", type=int, metavar="J", help="refine records trained for fewer than J steps, up to J "
                   "(default: the median budget of the zoo's source-method records, 1000 for the published zoo)")
    p.add_argument("--limit", type=int, help="refine at most this many records")
    p.add_argument("--minutes", type=float, help="start no new record after this many minutes")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--nice", action="store_true", help="run at the lowest CPU priority (idle time)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_zoo_refine)
    p = zoo.add_parser("pack", help="write a zoo (its ok records, checked) into one bundle file to ship it; the zoo is only read")
    p.add_argument("zoo", metavar="DIR", help="the zoo folder (a read-only one too)")
    p.add_argument("out", metavar="OUT", help="the bundle file to write (an uncompressed tar, e.g. zoo.tar)")
    p.set_defaults(func=cmd_zoo_pack)
    p = zoo.add_parser("unpack", help="unpack a bundle into a new zoo, or merge it into a zoo of the same backbone (every file checked)")
    p.add_argument("bundle", metavar="FILE", help="a bundle written by `metavote zoo pack`")
    p.add_argument("zoo", metavar="DIR", help="the zoo folder: new, empty, or a zoo of the bundle's backbone")
    p.add_argument("--backbone", metavar="FILE", help="refuse the bundle unless its records were made from this backbone")
    p.add_argument("--replace", action="store_true", help="when merging: take the bundle's version of records the zoo holds in another")
    p.set_defaults(func=cmd_zoo_unpack)

    p = sub.add_parser("similarity", help="the k nearest zoo tasks to a task, with their scores")
    p.add_argument("--zoo", required=True)
    p.add_argument("--data", help="data root (default: $METAVOTE_DATA, then ../shared/data)")
    p.add_argument("--dataset", help="dataset name or image folder of the target (default: the zoo's dataset)")
    p.add_argument("--classes", help="the target task's classes, comma-separated")
    p.add_argument("--task", help="or the task id of a zoo record")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--metric", choices=["leep", "wordnet", "embedding"], default="leep")
    p.add_argument("--rule", choices=["best_match", "mean_pairs"], default="best_match", help="WordNet aggregation rule")
    p.add_argument("--preselect", type=int, help="score only the top N candidates of the cheap embedding (fast for large zoos)")
    p.add_argument("--backbone", help="the zoo's backbone (needed by the embedding)")
    _add_threads(p)
    p.set_defaults(func=cmd_similarity)

    study = sub.add_parser("study", help="studies of a zoo").add_subparsers(dest="study_command", required=True, metavar="STUDY")
    p = study.add_parser("overlap", help="IoU of kept units per layer by similarity group: CSV + figures")
    p.add_argument("--zoo", required=True)
    p.add_argument("--data", help="data root (default: $METAVOTE_DATA, then ../shared/data)")
    p.add_argument("--dataset", help="dataset name or image folder of the zoo's tasks (default: the one the zoo recorded)")
    p.add_argument("--metric", choices=["leep", "wordnet", "embedding"], default="leep")
    p.add_argument("--rule", choices=["best_match", "mean_pairs"], default="best_match", help="WordNet aggregation rule")
    p.add_argument("--groups", type=int, default=5)
    p.add_argument("--out", default="runs/study", help="folder for the CSV and PNG files")
    p.add_argument("--backbone", help="the zoo's backbone (needed by the embedding)")
    _add_threads(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_study_overlap)

    def zoo_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--zoo", required=True, help="a zoo built by `metavote zoo build` (DIR?mode=ro opens it read-only)")
        p.add_argument("--zoo-read-only", action="store_true", help="open the zoo without writing anything into it "
                       "(automatic when its folder cannot be written)")
        p.add_argument("--data", help="data root (default: $METAVOTE_DATA, then ../shared/data)")
        p.add_argument("--dataset", help="dataset name or image folder of the tasks (default: the dataset the zoo's tasks come from)")
        p.add_argument("--backbone", help="the backbone the zoo was built from (default: the shared one)")
        p.add_argument("--profile", choices=profiles, default="cpu",
                       help="budget: 'cpu' (r 0.8, J 20, batch 64; IFP 10x = 200) or 'paper' (r 0.9, J 100, batch 128)")
        p.add_argument("--ratio", type=float, help="pruning ratio r (overrides the profile)")
        p.add_argument("--iterations", type=int, help="iterations J (overrides the profile; IFP's upper bound runs 10 J)")
        p.add_argument("--lr", type=float, help="learning rate (overrides the profile)")
        p.add_argument("--batch-size", type=int, help="batch size (overrides the profile)")
        p.add_argument("--temperature", type=float, help="MVP: softmax temperature tau of the votes (default 0.1; the tau-0.5 figures of docs/benchmarks need 0.5)")
        _add_threads(p)
        p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("prune", help="prune the backbone for a new task (MVP from the zoo, or IFP / random)")
    zoo_args(p)
    p.add_argument("--classes", help="the task's classes, comma-separated (default with --dataset: all its classes)")
    p.add_argument("--out", help="also write the pruned model as a standalone FILE.safetensors (no zoo or backbone needed to load it)")
    p.add_argument("--method", choices=["auto", *methods], default="auto",
                   help="auto (default): the nearest record when the zoo's records are pruned at the ratio asked (mvp in a "
                        "zoo built by AHNP), else mvp (the paper's vote, which makes any ratio); see README")
    p.add_argument("--neighbours", type=int, help="MVP: nearest zoo tasks that vote (default 3; nearest: 1)")
    p.add_argument("--similarity", choices=["ann", "leep", "wordnet", "embedding"],
                   help="MVP and nearest: neighbour search (default ann: LEEP on few images over the nearest records by task "
                        "embedding; leep: exhaustive LEEP)")
    p.add_argument("--align", type=_align, help="kept widths in multiples of this, at no more FLOPs than the ratio's: ONNX Runtime's "
                   "channel block, 8 on AVX2 CPUs and 16 on AVX-512 ones, or auto (this CPU's; 8 on AVX2: 1.8x faster at batch 1, "
                   "and 2.6 points less accurate for MVP at J = 20, see docs/benchmarks/deployment.md; default 1: round((1 - r) n) per layer, the paper's)")
    p.add_argument("--zoo-method", metavar="KEY", help="MVP and nearest: the candidates are the zoo's records of this method, or "
                   "'all': every record at the ratio, prune --save-to's too (default: nearest all; MVP the method the zoo was "
                   "built with, IFP in the published zoo, as the paper does; see --quality)")
    p.add_argument("--layout", choices=["neighbours", "ratio"], help="MVP: how many heads and MLP nodes each block keeps: as the "
                   "neighbours spread theirs (default) or round((1 - r) n) per block, the paper's (channels always keep the ratio's)")
    p.add_argument("--quality", type=float, help="MVP and nearest: take W x log10(record's steps / the zoo's) off a shorter-trained "
                   "record's score (default 0; see docs/benchmarks/peer.md, grown zoo)")
    p.add_argument("--no-save", action="store_true", help="do not add the result to the zoo")
    p.add_argument("--save-to", help="a zoo layered on a read-only --zoo that takes the new record (default: runs/layers/<zoo name>); "
                   "both vote from then on, and `--zoo SAVE_TO` alone opens the stack")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("bench", help="the main table: MVP vs IFP (J, 10J), Torch-Pruning's pipelines (J, 10J) and random on test "
                                     "tasks disjoint from the zoo")
    zoo_args(p)
    p.add_argument("--tasks", type=int, default=20, help="number of test tasks (default 20)")
    p.add_argument("--seed", type=int, default=1000, help="test task seed")
    p.add_argument("--out", default="runs/bench", help="folder for rows.jsonl, summary.md, summary.csv (resumes from it)")
    p.add_argument("--also", help="more methods at J in the table, comma-separated registry keys (e.g. nearest)")
    p.add_argument("--no-baselines", action="store_true", help="leave out the profile's baselines (the paper's other rows): MVP, "
                                                                "conventional pruning at J and 10 J, random, the peers and --also only")
    p.add_argument("--no-peers", action="store_true", help="leave out Torch-Pruning's pipelines (tp-magnitude, tp-taylor, "
                   "tp-iterative at J and 10 J: one-shot or iterative pruning of the pre-trained model, then fine-tuning the small one)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("ablate", help="one ablation: table + figure")
    p.add_argument("name", choices=["iterations", "neighbours", "groups", "task-size", "unseen", "zoos", "budget", "decomposition",
                                    "head", "recipe"])
    zoo_args(p)
    p.add_argument("--target-dataset", help="unseen: an image folder of new classes (see `metavote data fashion-mnist`)")
    p.add_argument("--other-zoo", help="zoos: a second zoo of the same backbone (e.g. `zoo build --importance taylor` or `--iterations 1000`)")
    p.add_argument("--tasks", type=int, default=10, help="number of test tasks (default 10)")
    p.add_argument("--seed", type=int, default=1000, help="test task seed")
    p.add_argument("--out", default="runs/ablations", help="folder for the figure and <name>/ tables (resumes from it)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("export", help="a zoo record as a standalone model file, or a standalone model as ONNX (checked; fp32 or int8)")
    p.add_argument("record", nargs="?", help="with --zoo: the record id or task id")
    p.add_argument("--zoo", help="the zoo holding the record")
    p.add_argument("--method", help="with --zoo: the record's method, when a task has several")
    p.add_argument("--out", help="with --zoo: the standalone FILE.safetensors to write")
    p.add_argument("--model", help="a standalone pruned model (.safetensors) to export")
    p.add_argument("--onnx", help="with --model: the .onnx file to write (needs `pip install 'metavote[onnx]'`)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="with --onnx: fp32 (default); int8 (ONNX Runtime static quantisation calibrated on the task's training "
                        "images); bf16 (the fp32 file, run by OpenVINO in bf16 on a CPU with AVX512_BF16 or AMX). int8 and bf16 "
                        "print their top-1 against the fp32 model's on the task's test split")
    p.add_argument("--int8", action="store_true", help="the same as --precision int8")
    p.add_argument("--data", help="with --precision int8 or bf16: the data root holding the model's dataset (default: $METAVOTE_DATA, "
                   "then ../shared/data)")
    p.add_argument("--calibration", type=int, metavar="N", help="with --precision int8: training images to calibrate on (default 128, seeded)")
    p.add_argument("--hf-folder", help="with --model (a pruned Hugging Face ViT or DeiT): a save_pretrained folder with the pruned sizes")
    _add_threads(p, device=False)  # the export and its check run on the CPU: ONNX Runtime's CPU provider is the reference
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="top-k classes of image files by a pruned model (.safetensors or .onnx)")
    p.add_argument("--model", required=True, help="a standalone pruned model (.safetensors) or its ONNX export (.onnx)")
    p.add_argument("images", nargs="+", help="image files (any size: resized as in training)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                   help="what runs an .onnx model (default: onnxruntime; openvino needs `pip install 'metavote[openvino]'`)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="what an .onnx model runs in (default: the precision it was exported for; bf16: OpenVINO on a CPU with bf16)")
    _add_threads(p)  # an .onnx model runs in ONNX Runtime or OpenVINO on the CPU, on --threads threads
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="the main job on its embedded default (see README)")
    p.add_argument("--data", help="data root (default: $METAVOTE_DATA, then ../shared/data)")
    p.add_argument("--backbone", help=BACKBONE_HELP)
    p.add_argument("--zoo", help="the zoo to prune from, opened read-only (default: $METAVOTE_ZOO, then the published "
                   "../shared/zoos/cifar100-resnet18w0.5-ifp1000; without one a 6-task zoo is built under --out)")
    p.add_argument("--out", default="runs/demo", help="where the demo writes a zoo when it builds one")
    _add_threads(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except MetavoteError as e:
        print(f"metavote: error: {one_line(e, limit=2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metavote: interrupted (finished work is kept; re-run the same command to resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`metavote zoo ls | head`): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
