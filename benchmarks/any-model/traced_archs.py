"""The traced architectures of the contract tests, measured: what the tracer finds and what pruning gives.

For each tiny Hugging Face configuration of ``tests/test_traced.py`` (random init, 32x32 input):
parameters, unit groups by kind, what was left whole, the trace's time (cold: Torch-Pruning's graph,
the forward-order pass and the cut-out check), and at r = 0.5 and 0.8 a voted Omega (from two random
records): parameters and inference FLOPs against the dense model, the largest difference between
the extracted and the masked dense model, and ONNX Runtime against PyTorch (the largest logit difference relative to
the logits' scale). Every class transformers lists: ``benchmarks/any-model/hf_archs.py``.

    python benchmarks/any-model/traced_archs.py        # from the project root; 2 threads; about a minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from metavote.deploy import export_onnx, save_pruned  # noqa: E402
from metavote.methods import random_subnetwork, sample_by_votes, vote_counts  # noqa: E402
from metavote.models import count_parameters  # noqa: E402
from metavote.models import traced as traced_module  # noqa: E402
from metavote.pruning import extract, mask, target_widths  # noqa: E402
from metavote.training import step_flops  # noqa: E402
from test_traced import ARCHS, hf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared _common.py
from _common import save  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    rows, lines = [], ["| architecture | parameters | groups (kind: count) | left whole | trace s | r | kept params | kept FLOPs | "
                       "max \\|extract − mask\\| | ONNX − PyTorch (relative) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    folder = Path(tempfile.mkdtemp())
    for arch in ARCHS:
        model = hf(arch)
        traced_module._TRACES.clear()  # a cold trace
        start = time.perf_counter()
        groups = model.unit_groups()
        seconds = time.perf_counter() - start
        kinds = {}
        for g in groups:
            kinds[g.kind] = kinds.get(g.kind, 0) + 1
        dense_flops = step_flops(model, 2, backward=False)
        for r in (0.5, 0.8):
            records = [random_subnetwork(groups, r, seed=s) for s in (1, 2)]
            subnet = sample_by_votes(vote_counts(records), target_widths(groups, r), seed=3)
            small = extract(model, subnet).eval()
            with torch.no_grad():
                diff = float((small(x) - mask(model, subnet).eval()(x)).abs().max())
            save_pruned(folder / f"{arch}.safetensors", small, subnet, ["a", "b", "c", "d"])
            onnx = export_onnx(folder / f"{arch}.safetensors", folder / f"{arch}.onnx", check_images=x).relative
            row = {"arch": arch, "parameters": count_parameters(model), "groups": kinds, "skipped": len(model.trace().skipped),
                   "trace_seconds": seconds, "ratio": r, "kept_parameters": count_parameters(small) / count_parameters(model),
                   "kept_flops": step_flops(small, 2, backward=False) / dense_flops, "extract_vs_mask": diff, "onnx_vs_torch": onnx}
            rows.append(row)
            lines.append(f"| {arch} | {row['parameters']:,} | {', '.join(f'{k}: {v}' for k, v in kinds.items())} | {row['skipped']} | "
                         f"{seconds:.2f} | {r} | {row['kept_parameters']:.1%} | {row['kept_flops']:.1%} | {diff:.1e} | {onnx:.1e} |")
    save("traced_archs", rows, "\n".join(lines))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()  # no options: --help only
    main()
