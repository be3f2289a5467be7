"""Supervised and SimSiam pre-training on a toy dataset: output files, resume, validation."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import metavote.pretrain as mvpretrain
from helpers import state_dicts_equal, synthetic_dataset
from metavote.errors import CheckpointError, ConfigError
from metavote.models import load_backbone, load_weights
from metavote.pretrain import PretrainConfig, default_checkpoint_path, one_cycle_lr, pretrain, simsiam_view
from metavote.training import evaluate


def tiny_config(**kw) -> PretrainConfig:
    return PretrainConfig(**{"width": 0.125, "epochs": 2, "batch_size": 8, "lr": 0.02, "cutout": 8, "seed": 0} | kw)


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset()  # 6 classes x 12 train / 4 test: 9 steps per epoch at batch 8


def _interrupt_on_call(monkeypatch, n: int) -> list:
    """Make the n-th end-of-epoch evaluation raise KeyboardInterrupt (as Ctrl-C during epoch n)."""
    calls = []
    real = mvpretrain.evaluate

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mvpretrain, "evaluate", flaky)
    return calls


def test_supervised_pretrain_writes_weights_and_metadata(tmp_path, dataset):
    out = tmp_path / "sup.safetensors"
    result = pretrain(dataset, out, tiny_config(), progress=False)
    assert result.path == out and out.exists() and result.resumed_from_epoch == 0
    assert not default_checkpoint_path(out).exists()  # the resume checkpoint is removed when done
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert all(h["loss"] > 0 and 0 <= h["test_acc"] <= 1 for h in result.history)
    _, meta = load_weights(out)
    assert meta["arch"] == "cifar_resnet18" and meta["width"] == 0.125 and meta["method"] == "supervised"
    assert meta["classes"] == dataset.classes and meta["dataset"] == "synthetic" and meta["num_classes"] == 6
    assert meta["test_acc"] == result.accuracy == result.history[-1]["test_acc"]
    assert meta["history"] == result.history and meta["epochs"] == 2
    assert meta["mean"] == pytest.approx([0.5071, 0.4865, 0.4409])
    # the reported accuracy is that of the written weights
    model, meta = load_backbone(out)
    assert model.num_classes == 6 and meta["classes"] == dataset.classes
    assert evaluate(model, dataset.test_images, dataset.test_labels) == result.accuracy
    assert result.accuracy > 0.5  # 18 SGD steps learn the colour-coded classes (chance is 1/6)


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path, dataset, monkeypatch):
    reference = pretrain(dataset, tmp_path / "ref.safetensors", tiny_config(), progress=False)

    out = tmp_path / "run.safetensors"
    with monkeypatch.context() as m:
        calls = _interrupt_on_call(m, 2)
        with pytest.raises(KeyboardInterrupt):
            pretrain(dataset, out, tiny_config(), progress=False)
        assert len(calls) == 2
    assert not out.exists() and default_checkpoint_path(out).exists()

    resumed = pretrain(dataset, out, tiny_config(), progress=False)
    assert resumed.resumed_from_epoch == 1
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == reference.history[0] | {"secs": resumed.history[0]["secs"]}
    assert resumed.accuracy == reference.accuracy
    assert state_dicts_equal(load_file(str(out)), load_file(str(reference.path)))
    assert not default_checkpoint_path(out).exists()


def test_resume_checkpoint_of_another_config_is_refused(tmp_path, dataset, monkeypatch):
    out = tmp_path / "run.safetensors"
    with monkeypatch.context() as m:
        _interrupt_on_call(m, 2)
        with pytest.raises(KeyboardInterrupt):
            pretrain(dataset, out, tiny_config(), progress=False)
    with pytest.raises(CheckpointError, match="different configuration"):
        pretrain(dataset, out, tiny_config(lr=0.05), progress=False)
    with pytest.raises(CheckpointError, match="different configuration"):
        pretrain(dataset.subset(max_train_per_class=10), out, tiny_config(), progress=False)
    assert not out.exists()
    # --fresh: the stale checkpoint is ignored and replaced
    fresh = pretrain(dataset, out, tiny_config(lr=0.05, epochs=1), resume=False, progress=False)
    assert fresh.resumed_from_epoch == 0 and out.exists()


def test_corrupt_resume_checkpoint_raises_checkpoint_error(tmp_path, dataset):
    out = tmp_path / "run.safetensors"
    default_checkpoint_path(out).write_bytes(b"\x80\x02not a checkpoint" + bytes(100))
    with pytest.raises(CheckpointError):
        pretrain(dataset, out, tiny_config(epochs=1), progress=False)


def test_simsiam_writes_headless_encoder(tmp_path, dataset):
    out = tmp_path / "ssl.safetensors"
    result = pretrain(dataset, out, tiny_config(method="simsiam", epochs=1), progress=False)
    state, meta = load_weights(out)
    assert not any(k.startswith("fc.") for k in state)
    assert not any(k.startswith(("projector.", "predictor.", "encoder.")) for k in state)  # the bare encoder
    assert len(state) == 120  # 122 torchvision keys minus fc.weight and fc.bias
    assert meta["method"] == "simsiam" and meta["classes"] is None and meta["num_classes"] == 0
    assert 0.0 <= meta["knn_acc"] <= 1.0 and meta["knn_acc"] == result.accuracy
    assert "test_acc" not in meta
    model, meta = load_backbone(out)
    assert model.num_classes == 0 and meta["width"] == 0.125
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, model.num_features)


def test_simsiam_view_keeps_shape_and_range():
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = simsiam_view(x, torch.Generator().manual_seed(1))
    b = simsiam_view(x, torch.Generator().manual_seed(1))
    c = simsiam_view(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    # also at the extremes of the range
    for const in (0.0, 1.0):
        v = simsiam_view(torch.full((4, 3, 32, 32), const), torch.Generator().manual_seed(3))
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0 + 1e-6


def test_one_cycle_lr_shape():
    peak, total = 0.1, 100
    assert one_cycle_lr(0, total, peak) == pytest.approx(peak / 25)
    assert one_cycle_lr(30, total, peak) == pytest.approx(peak)
    assert one_cycle_lr(total, total, peak) == pytest.approx(peak * 1e-4)
    lrs = [one_cycle_lr(s, total, peak) for s in range(total + 1)]
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 30


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"method": "byol"}, "method"),
        ({"width": 0}, "width"),
        ({"width": 9}, "width"),
        ({"seed": -1}, "seed"),
        ({"epochs": 0}, "epochs"),
        ({"schedule": "step"}, "schedule"),
    ],
)
def test_config_validation(kw, match, tmp_path, dataset):
    with pytest.raises(ConfigError, match=match):
        PretrainConfig(**kw).validate()
    with pytest.raises(ConfigError, match=match):  # checked before any work is done
        pretrain(dataset, tmp_path / "x.safetensors", tiny_config(**kw), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_default_config_is_valid():
    PretrainConfig().validate()
    tiny_config(method="simsiam", schedule="cosine").validate()
