"""Every image classifier transformers lists, measured: pruned end to end, or refused and why.

For each ``*ForImageClassification`` class of ``MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES``,
built from its tiny config of ``tests/hf_tiny_configs.py`` (random init, as the walk of
``tests/test_hf_walk.py`` builds it): the outcome (pruned end to end, or the one-line refusal),
parameters, unit groups by kind, the channel sets left whole, the trace's time (cold: the
forward-order pass, Torch-Pruning's graph and searches, the cut-out check), and at r = 0.5 a voted
Omega (from two random records): parameters and FLOPs of a training step kept, the largest difference
between the extracted and the masked dense model, and ONNX Runtime against PyTorch (the largest
logit difference relative to the logits' scale).

    python benchmarks/any-model/hf_archs.py        # from the project root; 1 thread; 1-2 minutes on an idle machine
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from metavote.deploy import export_onnx, save_pruned  # noqa: E402
from metavote.errors import MetavoteError  # noqa: E402
from metavote.methods import random_subnetwork, sample_by_votes, vote_counts  # noqa: E402
from metavote.models import count_parameters  # noqa: E402
from metavote.models import traced as traced_module  # noqa: E402
from metavote.pruning import extract, mask, target_widths  # noqa: E402
from metavote.training import step_flops  # noqa: E402
from test_hf_walk import CLASSES, build  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save  # noqa: E402


def measure(model_type: str, cls: str, folder: Path) -> dict:
    row: dict = {"model_type": model_type, "class": cls}
    try:
        model = build(model_type, cls)
        row["parameters"] = count_parameters(model)
        row["input"] = model.input_size[-1]
        traced_module._TRACES.clear()  # a cold trace
        start = time.perf_counter()
        groups = model.unit_groups()
        row["trace_seconds"] = time.perf_counter() - start
        row["groups"] = {k: sum(g.kind == k for g in groups) for k in ("channel", "head", "node") if any(g.kind == k for g in groups)}
        row["left_whole"] = len(model.trace().skipped)
        row["skipped"] = model.trace().skipped
        if not groups:
            raise MetavoteError("nothing to prune: every coupled channel set is left whole")
        records = [random_subnetwork(groups, 0.5, seed=s) for s in (1, 2)]
        subnet = sample_by_votes(vote_counts(records), target_widths(groups, 0.5), seed=3)
        small = extract(model, subnet).eval()
        x = torch.rand(8, *model.input_size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            row["extract_vs_mask"] = float((small(x) - mask(model, subnet).eval()(x)).abs().max())
        row["kept_parameters"] = count_parameters(small) / count_parameters(model)
        row["kept_flops"] = step_flops(small, 2, backward=True) / step_flops(model, 2, backward=True)
        save_pruned(folder / f"{cls}.safetensors", small, subnet, ["a", "b", "c"])
        agreement = export_onnx(folder / f"{cls}.safetensors", folder / f"{cls}.onnx", check_images=x)
        row["onnx_relative"] = agreement.relative
        row["outcome"] = "pruned"
    except MetavoteError as e:
        row["outcome"] = "refused"
        row["reason"] = str(e)
    return row


def main() -> None:
    torch.set_num_threads(1)  # as the tests run; a busy 2-core machine makes 2 threads' timings erratic
    warnings.simplefilter("ignore")
    folder = Path(tempfile.mkdtemp())
    rows = [measure(t, c, folder) for t, c in CLASSES]
    lines = ["| class | outcome | parameters | groups (kind: count) | left whole | trace s | kept params | kept FLOPs (a training step) | "
             "max \\|extract − mask\\| | ONNX − PyTorch (relative) |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = r["class"].replace("ForImageClassification", "")
        if r["outcome"] == "pruned":
            groups = ", ".join(f"{k}: {v}" for k, v in r["groups"].items())
            lines.append(f"| {name} | pruned | {r['parameters']:,} | {groups} | {r['left_whole']} | {r['trace_seconds']:.2f} | "
                         f"{r['kept_parameters']:.1%} | {r['kept_flops']:.1%} | {r['extract_vs_mask']:.1e} | {r['onnx_relative']:.1e} |")
        else:
            reason = r["reason"].replace("|", "\\|")
            lines.append(f"| {name} | refused: {reason} | {r.get('parameters', '–')} | | | | | | | |")
    save("hf_archs", rows, "\n".join(lines))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()  # no options: --help only
    main()
