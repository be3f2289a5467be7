"""EfficientNet-Lite0 deployed: the dense model (ImageNet weights, the task's 5-way head) against a zoo record
pruned at r = 0.8 (``lite0_zoo.py``), batch 1 on 1 thread, in the same runtime: ONNX Runtime fp32 and int8
(``export_int8``: static QDQ, calibrated on the task's training images), OpenVINO f32 and int8 (the same int8
file), at the profile's 96 px and at 224 px (the same weights, the model built for 224 px inputs); and the
pruned model's int8 accuracy against its fp32 accuracy on the task's test split. Run with nothing else on the
machine:

    python benchmarks/real-model/lite0_deploy.py [--zoo runs/zoo-lite0] [--runs 200]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import batch_latency, md_table, save  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--zoo", default="runs/zoo-lite0")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()

    import torch

    from metavote.deploy import OnnxModel, OpenVinoModel, export_int8, export_onnx, export_record, load_pruned, save_pruned
    from metavote.experiments import context
    from metavote.models import load_backbone, replace_head
    from metavote.models.cutting import shrink
    from metavote.pruning import SubNetwork
    from metavote.training import set_threads, step_flops

    ctx = context(args.zoo, device="cpu", read_only=True)
    record = ctx.zoo.records(method=ctx.zoo.source_method)[0]
    task = record.task
    rows, facts = [], {"record": record.record_id, "task": str(task), "flops": {}, "parameters": {}}
    with tempfile.TemporaryDirectory(prefix="lite0-deploy-") as tmp:
        folder = Path(tmp)
        pruned_own, subnet = ctx.zoo.load(record)
        own = ctx.backbone.input_size[-1]  # the zoo's size (96 px for lite0-cpu)
        sizes = (own, 224)
        for size in sizes:
            backbone, _ = (ctx.backbone, None) if size == own else load_backbone("efficientnet-lite0", image_size=size)
            dense = replace_head(copy.deepcopy(backbone), task.n_way)
            pruned = shrink(dense, subnet.kept)
            pruned.load_state_dict(pruned_own.state_dict())
            for name, model in (("dense", dense), ("pruned", pruned)):
                path = folder / f"{name}{size}.safetensors"
                save_pruned(path, model.eval(), SubNetwork.full(model.unit_groups()) if name == "dense" else subnet, task.classes,
                            task=task.to_dict(), method=name)
                export_onnx(path, folder / f"{name}{size}.onnx")
                int8 = export_int8(path, folder / f"{name}{size}.int8.onnx")
                facts["flops"][f"{name} {size}px"] = step_flops(model, 1, backward=False)
                facts["parameters"][name] = sum(p.numel() for p in model.parameters())
                if name == "pruned" and size == own:
                    facts["int8"] = {"fp32_accuracy": int8.fp32_accuracy, "int8_accuracy": int8.accuracy, "same_top1": int8.agreement,
                                     "test_images": int8.test_images}
            set_threads(1)
            cells = {}
            for name in ("dense", "pruned"):
                torch_model = load_pruned(folder / f"{name}{size}.safetensors").eval()
                fp32, q8 = OnnxModel(folder / f"{name}{size}.onnx"), OnnxModel(folder / f"{name}{size}.int8.onnx")  # on set_threads(1)
                ov, ov8 = OpenVinoModel(folder / f"{name}{size}.onnx", 1), OpenVinoModel(folder / f"{name}{size}.int8.onnx", 1)
                cells |= {(name, "PyTorch"): lambda x, m=torch_model: m(torch.from_numpy(x)),
                          (name, "ONNX Runtime fp32"): lambda x, m=fp32: m(torch.from_numpy(x)),
                          (name, "ONNX Runtime int8"): lambda x, m=q8: m(torch.from_numpy(x)),
                          (name, "OpenVINO f32"): lambda x, m=ov: m(torch.from_numpy(x)),
                          (name, "OpenVINO int8"): lambda x, m=ov8: m(torch.from_numpy(x))}
            rows += batch_latency(cells, args.runs, batches=(1,), size=size, threads=1, px=size)
    table = []
    for size in sizes:
        for runtime in dict.fromkeys(r["runtime"] for r in rows):
            d, p = (next(r for r in rows if r["px"] == size and r["runtime"] == runtime and r["model"] == m) for m in ("dense", "pruned"))
            table.append([f"{size} px, {runtime}", f"{d['median_ms']:.2f}", f"{p['median_ms']:.2f}", f"{d['median_ms'] / p['median_ms']:.1f}x",
                          f"{facts['flops'][f'dense {size}px'] / facts['flops'][f'pruned {size}px']:.1f}x"])
    text = md_table(["input, runtime (batch 1, 1 thread)", "dense ms", "pruned ms", "speed-up", "FLOPs ratio"], table)
    text += (f"\n\nparameters: dense {facts['parameters']['dense']:,}, pruned {facts['parameters']['pruned']:,} (record {record.record_id}, "
             f"{task}); int8 on the task's {facts['int8']['test_images']} test images: top-1 {facts['int8']['int8_accuracy']:.1%} against fp32's "
             f"{facts['int8']['fp32_accuracy']:.1%}, the same class on {facts['int8']['same_top1']:.1%}")
    save("lite0_deploy", {"rows": rows, "facts": facts}, text)


if __name__ == "__main__":
    main()
