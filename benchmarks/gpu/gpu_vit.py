"""The ViT family on a GPU machine: parity with timm itself, the shared ViT's accuracy, ViT-S at the
paper's ratio, and the CUDA tests. One short call inside a device lease.

The GPU machine has timm (no weights can be downloaded there): its randomly initialised
``vit_small_patch16_224`` and ``deit_small_patch16_224`` state_dicts are loaded by
``metavote.load_backbone`` from plain ``.pth`` files and the logits compared; the shared CIFAR ViT
is loaded into timm's own ``VisionTransformer`` and compared the same way. Then: the shared ViT's
top-1 on the whole CIFAR-100 test split (`metavote evaluate`), and ViT-S/16 at 224 pruned to the
paper's ratio r = 0.9 (heads and MLP nodes, a random sub-network: no ImageNet weights exist here)
against the dense model: parameters, training FLOPs per step counted on the real 224 input, and
measured step and inference times at batch 128 under bf16 autocast.

    python benchmarks/gpu/gpu_vit.py prepare --out .gpu                 # here: test split + the shared ViT (38 MB)
    python benchmarks/gpu/gpu_vit.py run --data .gpu --out $OUT         # there
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from metavote.cli import main as cli  # noqa: E402
from metavote.data import ImageDataset, load_dataset, write_npz_dataset  # noqa: E402
from metavote.methods import random_subnetwork  # noqa: E402
from metavote.models import count_parameters, load_backbone, vit_small_patch16_224  # noqa: E402
from metavote.pruning import extract  # noqa: E402
from metavote.training import Costs, latency, sgd, train_steps  # noqa: E402

VIT = "cifar100_vit_d192_l6_h6.safetensors"


def prepare(out: Path) -> None:
    """The whole test split (and one training image per class, so the folder loads as CIFAR-100) and the shared ViT."""
    ds = load_dataset("cifar100")
    first = np.array([np.flatnonzero(ds.train_labels == c)[0] for c in range(100)])
    small = ImageDataset("cifar100", ds.classes, ds.train_images[first], ds.train_labels[first], ds.test_images, ds.test_labels)
    write_npz_dataset(small, out / "cifar100")
    shutil.copy(ROOT.parent / "shared" / "pretrained" / VIT, out / VIT)
    print(f"wrote {out}: {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


@torch.no_grad()
def timm_parity(device: torch.device, tmp: Path, data: Path) -> dict:
    import timm

    out = {"timm": timm.__version__}
    for name in ("vit_small_patch16_224", "deit_small_patch16_224"):
        torch.manual_seed(0)
        ref = timm.create_model(name, pretrained=False).eval().to(device)
        torch.save(ref.state_dict(), tmp / f"{name}.pth")
        ours, meta = load_backbone(tmp / f"{name}.pth")
        ours.eval().to(device)
        x = torch.rand(8, 3, 224, 224, device=device)
        # timm's models take normalised input; ours normalise inside (ImageNet mean/std for a file without metadata)
        diff = (ours(x) - ref((x - ours.mean) / ours.std)).abs().max().item()
        out[name] = {"max_abs_logit_diff": diff, "config": meta["config"], "parameters": count_parameters(ours)}
        print(f"{name}: timm vs metavote max |logit diff| {diff:.2e}", flush=True)
    ours, _ = load_backbone(data / VIT)
    ref = timm.models.VisionTransformer(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=6, mlp_ratio=2.0,
                                        num_classes=100, global_pool="token")
    ref.load_state_dict(load_backbone(data / VIT)[0].state_dict())  # strict: timm's own keys
    ours, ref = ours.eval().to(device), ref.eval().to(device)
    x = torch.rand(64, 3, 32, 32, device=device)
    diff = (ours(x) - ref((x - ours.mean) / ours.std)).abs().max().item()
    out["shared_cifar_vit_in_timm"] = {"max_abs_logit_diff": diff}
    print(f"shared CIFAR ViT loaded into timm's VisionTransformer: max |logit diff| {diff:.2e}", flush=True)
    return out


def vit_small_at_paper_ratio(device: torch.device, ratio: float = 0.9, batch: int = 128) -> dict:
    torch.manual_seed(0)
    dense = vit_small_patch16_224(num_classes=5).to(device)
    small = extract(dense, random_subnetwork(dense.unit_groups(), ratio, seed=0)).to(device)
    rows = {}
    for label, model in (("dense", dense), (f"r={ratio}", small)):
        costs = Costs()
        costs.add_steps(model, 1, batch)
        x = torch.rand(batch, 3, 224, 224, device=device)
        y = torch.randint(0, 5, (batch,), device=device)
        batches = iter(lambda: (x, y), None)
        opt = sgd(model, 0.01)
        train_steps(model, batches, opt, 5)  # warm-up (bf16 autocast on CUDA)
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            train_steps(model, batches, opt, 1)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            infer = latency(model, batch, repeats=20)
        groups = model.unit_groups()
        rows[label] = {"parameters": count_parameters(model), "train_gflops_per_step": costs.flops / 1e9,
                       "train_step_ms": 1e3 * float(np.median(times)), "inference_ms": 1e3 * infer,
                       "heads": sum(g.size for g in groups if g.name.endswith("attn")), "mlp_nodes": sum(g.size for g in groups if g.name.endswith("mlp"))}
        print(f"ViT-S/16 224 {label}: {rows[label]}", flush=True)
    return rows


def run(data: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    result = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "python": platform.python_version(),
              "argv": sys.argv}
    print(json.dumps(result), flush=True)
    tmp = Path("/tmp/gpu_vit")
    tmp.mkdir(exist_ok=True)
    result["timm_parity"] = timm_parity(device, tmp, data)
    t0 = time.perf_counter()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        cli(["evaluate", "--weights", str(data / VIT), "--data", str(data), "--device", "cuda"])
    result["evaluate_seconds"] = time.perf_counter() - t0
    result["evaluate_printed"] = printed.getvalue().strip()
    print(f"metavote evaluate: {result['evaluate_printed']} ({result['evaluate_seconds']:.1f} s)", flush=True)
    _, meta = load_backbone(data / VIT)
    result["metadata_test_acc"] = meta["test_acc"]
    result["vit_small_r0.9"] = vit_small_at_paper_ratio(device)
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_device.py", "tests/test_vit.py",
                            "-k", "cuda"], cwd=ROOT, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT / "src")})
    print(tests.stdout[-3000:], tests.stderr[-2000:], flush=True)
    result["cuda_tests"] = tests.stdout.strip().splitlines()[-1] if tests.stdout.strip() else tests.stderr[-300:]
    (out / "gpu_vit.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "run"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data", default=".gpu")
    args = ap.parse_args()
    prepare(Path(args.out)) if args.step == "prepare" else run(Path(args.data), Path(args.out))
