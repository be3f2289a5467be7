"""Where a deployed model's time goes: the per-category split adds up to the call, and the FLOPs split is the model's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metavote.deploy import export_onnx, load_pruned
from metavote.latency import CATEGORIES, flops_split, onnx_profile, timing, torch_profile
from metavote.models import cifar_resnet18
from metavote.training import step_flops

from test_deploy import tiny_pruned_file


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("latency")
    model = tiny_pruned_file(folder / "m.safetensors")
    export_onnx(model, folder / "m.onnx")
    return model, folder / "m.onnx"


def test_timing_reports_median_and_quartiles():
    calls = []
    t = timing(lambda: calls.append(1), runs=30, warmup=5)
    assert len(calls) == 35 and t["runs"] == 30
    assert 0 <= t["p25_ms"] <= t["median_ms"] <= t["p75_ms"]


def test_flops_split_counts_every_operator_once():
    model = cifar_resnet18(num_classes=5, width=0.25).eval()
    split = flops_split(model)
    assert set(split) - {"total"} <= set(CATEGORIES)
    assert split["total"] == sum(v for k, v in split.items() if k != "total")
    # convolutions and the head are FlopCounterMode's count; the rest is elementwise work on top of it
    assert split["convolutions"] + split["the head"] >= step_flops(model, 1, backward=False)
    assert split["convolutions"] > 0.9 * split["total"] and split["activations"] > 0 and split["residual adds"] > 0


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_the_split_adds_up_to_the_median_call(exported, runtime):
    torch.set_num_threads(1)
    model_path, onnx_path = exported
    split = onnx_profile(onnx_path, runs=20) if runtime == "onnx" else torch_profile(load_pruned(model_path), runs=20)
    assert set(split) == {*CATEGORIES, "total"}
    assert sum(split[c] for c in CATEGORIES) == pytest.approx(split["total"], rel=1e-6)
    assert split["convolutions"] > 0 and split["per-call overhead"] > 0
    assert all(v >= 0 for v in split.values())
