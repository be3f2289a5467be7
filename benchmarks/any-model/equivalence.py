"""Bit-identical results: the hand-written unit groups against the traced ones, and against the code before.

Two checks on real CIFAR-100 tasks and the shared backbones, short budgets:

1. **Traced = hand-written.** Each shared backbone (the width-0.5 ResNet-18 and the small ViT) is
   run twice: as its own family (hand-written ``unit_groups``) and wrapped as a traced model
   (``wrap_model``: groups from Torch-Pruning's dependency graph, rebuilt by ``create_model`` from a
   config with ``wrap``). ResNet: IFP on 3 tasks (r = 0.8, J = 30, batch 32) forms a zoo, then random
   pruning, MVP (with the pre-trained head rows and with neighbour rows) and the nearest record on a
   fourth task, J = 10. ViT: AHNP on 3 tasks forms the zoo, then random, MVP and the nearest record.
   For each result: accuracy, training FLOPs, a SHA-256 of the compact model's state dict (keys
   mapped: the wrapper's ``net.`` dropped, its ``head`` named as the family's) and the kept units.
2. **Unchanged by the change.** The hand-written ResNet results against
   ``results/equivalence_before.json``, the same computation at commit bca3a93 (before issue 23's
   in-place layer cutting, parameter slots and capabilities). MVP's rows differ there by design:
   its vote now draws group after group in the model's depth order, where it followed the record
   files' alphabetical key order (which differs between the two namings).

    python benchmarks/any-model/equivalence.py        # from the project root; 2 threads; about 2 minutes
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from metavote import Zoo, create_method, head_rows_for, load_backbone, load_dataset, sample_tasks, wrap_model
from metavote.models import Backbone

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import results_dir, save  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "pretrained"
BACKBONES = {"resnet": SHARED / "cifar100_resnet18_w0.5.safetensors", "vit": SHARED / "cifar100_vit_d192_l6_h6.safetensors"}


def digest(model: Backbone, classifier: str) -> str:
    """SHA-256 of the state dict, keys in the hand-written family's names."""
    h = hashlib.sha256()
    state = {(f"{classifier}.{k[5:]}" if k.startswith("head.") and classifier != "head" else k.removeprefix("net.")): v
             for k, v in model.state_dict().items()}
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def traced_view(backbone: Backbone, meta: dict) -> tuple[Backbone, dict]:
    """The same network as a traced model (normalising once: the wrapper's mean 0 and std 1 are exact)."""
    settings = {k: v for k, v in backbone.config.items() if k != "arch"}
    traced = wrap_model(copy.deepcopy(backbone), backbone.classifier_name, input_size=backbone.input_size, mean=(0, 0, 0), std=(1, 1, 1),
                        arch=backbone.config["arch"], settings=settings)
    return traced, meta | {"config": traced.config}


def run(family: str, backbone: Backbone, meta: dict, dataset, folder: Path) -> dict:
    classifier = "fc" if family == "resnet" else "head"
    tasks = sample_tasks(dataset, 5, 4, seed=77)
    zoo_method = ("ifp", {"lr": 0.01}) if family == "resnet" else ("ahnp", {"optimizer": "adamw", "lr": 5e-4})
    budget = {"ratio": 0.8, "batch_size": 32} | zoo_method[1]
    out, records = {}, []

    order = [g.name for g in backbone.unit_groups()]  # kept units group by group in depth order (the names differ)

    def note(key, r, extra=()):
        out[key] = [r.accuracy, r.costs.flops, digest(r.model, classifier), [r.subnet.kept[name].tolist() for name in order], *extra]

    with Zoo(folder, meta) as zoo:
        for task in tasks[:3]:
            r = create_method(zoo_method[0], iterations=30, **budget).run(backbone, dataset.load_task(task), None,
                                                                          head_rows_for(meta["classes"], task.classes))
            note(f"{zoo_method[0]} {task.id}", r)
            records.append(zoo.add(task, r))
        task = tasks[3]
        data, rows = dataset.load_task(task), head_rows_for(meta["classes"], task.classes)
        short = budget | {"iterations": 10}
        note("random", create_method("random", **short).run(backbone, data, None, rows))
        note("mvp", create_method("mvp", **short, neighbours=records).run(backbone, data, zoo, rows))
        r = create_method("mvp", **short, neighbours=records).run(backbone, data, zoo, None)
        note("mvp-nohead", r, [r.params["head"]])
        note("nearest", create_method("nearest", **short, neighbours=records[:1]).run(backbone, data, zoo, rows))
    return out


def main() -> None:
    torch.set_num_threads(2)
    dataset = load_dataset("cifar100")
    folder = Path(tempfile.mkdtemp())
    results, lines = {}, ["| family | result | accuracy | training GFLOP | state-dict SHA-256 | traced = hand-written | = before (bca3a93) |",
                          "|---|---|---:|---:|---|---|---|"]
    before = json.loads((results_dir() / "equivalence_before.json").read_text())
    try:
        for family, path in BACKBONES.items():
            backbone, meta = load_backbone(path, dataset=dataset)
            traced, traced_meta = traced_view(backbone, meta)
            hand = run(family, backbone, meta, dataset, folder / f"{family}-hand")
            mine = run(family, traced, traced_meta, dataset, folder / f"{family}-traced")
            results[family] = {"hand_written": hand, "traced": mine}
            for key, now in hand.items():
                old = before.get(key) if family == "resnet" else None
                same_before = "–" if old is None else ("yes" if now[:3] == old[:3] else "NO")
                lines.append(f"| {family} | {key} | {now[0]:.2%} | {now[1] / 1e9:.1f} | {now[2]} | {'yes' if mine[key] == now else 'NO'} | "
                             f"{same_before} |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    identical = all(r["traced"] == r["hand_written"] for r in results.values())
    save("equivalence", {"results": results, "traced_identical": identical}, "\n".join(lines))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()  # no options: --help only
    main()
