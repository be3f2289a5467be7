"""ResNet layouts, weights files (safetensors / .pt), heads and backbone location."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import metavote.models as mvmodels
import metavote.models.weights as mvweights
from helpers import SHARED_BACKBONE, SHARED_DATA, state_dicts_equal, synthetic_dataset, tiny_backbone_file
from metavote.errors import CheckpointError, ConfigError
from metavote.models import (
    cifar_resnet18,
    create_model,
    head_rows_for,
    infer_width,
    load_backbone,
    load_weights,
    locate_backbone,
    replace_head,
    resnet50,
    save_weights,
)


def _x(n=2, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- layouts


def test_cifar_resnet18_state_dict_is_torchvision_layout():
    sd = cifar_resnet18(width=0.125, num_classes=10).state_dict()
    assert len(sd) == 122
    for key in ("conv1.weight", "bn1.num_batches_tracked", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.running_mean", "layer4.1.bn2.running_var", "fc.weight", "fc.bias"):
        assert key in sd
    assert "layer1.0.downsample.0.weight" not in sd  # same shape: identity shortcut
    assert not any(k in ("mean", "std") or k.endswith((".mean", ".std")) for k in sd)
    model = cifar_resnet18(width=0.125, num_classes=10)
    assert set(dict(model.named_buffers())) - set(sd) == {"mean", "std"}  # present, not persistent
    assert sd["conv1.weight"].shape == (8, 3, 3, 3)  # CIFAR stem: 3x3


def test_resnet50_layout():
    model = resnet50(num_classes=7, width=0.125)  # same key count at any width
    sd = model.state_dict()
    assert len(sd) == 320
    assert model.layer1[0].downsample is not None and "layer1.0.downsample.0.weight" in sd
    assert sd["conv1.weight"].shape[-1] == 7
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 7)


def test_width_half():
    model = cifar_resnet18(width=0.5, num_classes=100)
    assert model.conv1.out_channels == 32
    assert model.fc.in_features == 256 and model.num_features == 256
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels,
            model.layer3[0].conv1.out_channels, model.layer4[0].conv1.out_channels] == [32, 64, 128, 256]


def test_forward_shapes_and_headless():
    model = cifar_resnet18(width=0.125, num_classes=5).eval()
    assert model(_x()).shape == (2, 5) and model.num_classes == 5
    enc = cifar_resnet18(width=0.125, num_classes=0).eval()
    assert enc.num_classes == 0 and enc(_x()).shape == (2, 64)
    assert not any(k.startswith("fc.") for k in enc.state_dict())


def test_create_model_and_width_validation():
    assert isinstance(create_model({"arch": "cifar_resnet18", "width": 0.125}, 3), mvmodels.ResNet)
    with pytest.raises(ConfigError, match="unknown architecture"):
        create_model({"arch": "vgg", "width": 1.0}, 3)
    with pytest.raises(ConfigError):
        cifar_resnet18(width=0)


# ----------------------------------------------------------------------------- weights files


def test_save_load_round_trip(tmp_path):
    ds = synthetic_dataset()
    path = tiny_backbone_file(tmp_path / "b.safetensors", ds)
    torch.manual_seed(0)
    ref = cifar_resnet18(width=0.125, num_classes=6).eval()
    model, meta = load_backbone(path)
    model.eval()
    assert torch.equal(model(_x()), ref(_x()))
    assert meta["arch"] == "cifar_resnet18" and meta["width"] == 0.125
    assert meta["classes"] == ds.classes and meta["dataset"] == "synthetic"
    assert meta["fingerprint"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # the file is complete: no temporary files are left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors"]


def test_fingerprint_differs_between_files(tmp_path):
    ds = synthetic_dataset()
    a = load_backbone(tiny_backbone_file(tmp_path / "a.safetensors", ds, seed=0))[1]["fingerprint"]
    b = load_backbone(tiny_backbone_file(tmp_path / "b.safetensors", ds, seed=1))[1]["fingerprint"]
    assert a != b


def test_width_inferred_without_metadata(tmp_path):
    torch.manual_seed(1)
    src = cifar_resnet18(width=0.25, num_classes=4).eval()
    path = save_weights(tmp_path / "plain.safetensors", src)
    model, meta = load_backbone(path)
    assert meta["width"] == 0.25 and meta["arch"] == "cifar_resnet18" and meta["classes"] is None
    assert model.num_classes == 4
    assert torch.equal(model.eval()(_x()), src(_x()))
    assert infer_width(src.state_dict()) == 0.25
    with pytest.raises(CheckpointError):
        infer_width({"fc.weight": torch.zeros(2, 2)})


def test_metadata_classes_filled_from_dataset(tmp_path):
    ds = synthetic_dataset(name="toy")
    model = cifar_resnet18(width=0.125, num_classes=6)
    path = save_weights(tmp_path / "m.safetensors", model, {"arch": "cifar_resnet18", "width": 0.125, "dataset": "toy"})
    assert load_backbone(path)[1]["classes"] is None
    assert load_backbone(path, dataset=ds)[1]["classes"] == ds.classes
    assert load_backbone(path, dataset=synthetic_dataset(name="other"))[1]["classes"] is None


def test_string_metadata_that_looks_like_json_round_trips(tmp_path):
    ds = synthetic_dataset(name="2012")
    model = cifar_resnet18(width=0.125, num_classes=6)
    path = save_weights(tmp_path / "m.safetensors", model, {"dataset": "2012", "note": "true"})
    _, meta = load_weights(path)
    assert meta["dataset"] == "2012" and meta["note"] == "true"
    assert load_backbone(path, dataset=ds)[1]["classes"] == ds.classes


def test_pt_state_dict_loads(tmp_path):
    torch.manual_seed(2)
    src = cifar_resnet18(width=0.125, num_classes=3).eval()
    for name, obj in (("a.pt", src.state_dict()), ("b.pth", {"state_dict": src.state_dict()})):
        torch.save(obj, tmp_path / name)
        state, meta = load_weights(tmp_path / name)
        assert meta == {} and state_dicts_equal(state, src.state_dict())
        model, meta = load_backbone(tmp_path / name)
        assert meta["width"] == 0.125 and torch.equal(model.eval()(_x()), src(_x()))


def test_other_width_raises_shape_mismatch(tmp_path):
    ds = synthetic_dataset()
    path = tiny_backbone_file(tmp_path / "w25.safetensors", ds, width=0.25)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_backbone(path, width=0.125)
    # a file whose metadata lies about its width
    lying = save_weights(tmp_path / "lying.safetensors", cifar_resnet18(width=0.25, num_classes=6), {"width": 0.125})
    with pytest.raises(CheckpointError, match=r"shape mismatch.*conv1\.weight \(16, 3, 3, 3\) vs \(8, 3, 3, 3\)"):
        load_backbone(lying)


def test_missing_and_unexpected_keys(tmp_path):
    sd = cifar_resnet18(width=0.125, num_classes=3).state_dict()
    del sd["layer3.1.bn2.running_var"]
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match="1 missing keys.*1 unexpected keys"):
        load_backbone(tmp_path / "odd.safetensors")


def test_garbage_safetensors_raises_checkpoint_error(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        load_weights(path)
    with pytest.raises(CheckpointError):
        load_backbone(path)
    # a truncated real file, too
    good = tiny_backbone_file(tmp_path / "good.safetensors", synthetic_dataset())
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        load_backbone(path)


def test_truncated_pt_raises_checkpoint_error(tmp_path):
    torch.save(cifar_resnet18(width=0.125, num_classes=3).state_dict(), tmp_path / "full.pt")
    blob = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        load_weights(tmp_path / "cut.pt")


@pytest.mark.parametrize(
    "name, content",
    [("garbage.bin", np.random.default_rng(0).bytes(500)), ("garbage.pt", b"\x80\x02garbage" + bytes(200)), ("text.pt", b"hello world\n")],
)
def test_garbage_pt_raises_checkpoint_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_weights(path)


CALLS: list = []


def _record_call(*args):
    CALLS.append(args)
    return torch.zeros(1)


class _RunsCode:
    def __reduce__(self):
        return (_record_call, ("pwned",))


def test_pt_with_code_is_never_run(tmp_path):
    torch.save({"fc.weight": _RunsCode()}, tmp_path / "evil.pt")
    CALLS.clear()
    with pytest.raises(CheckpointError):
        load_weights(tmp_path / "evil.pt")
    assert CALLS == []


def test_nonexistent_weights_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")


# ----------------------------------------------------------------------------- heads


def test_replace_head_with_rows_copies_them():
    torch.manual_seed(3)
    model = cifar_resnet18(width=0.125, num_classes=6).eval()
    x = _x(3)
    before = model(x)
    old_w, old_b = model.fc.weight.detach().clone(), model.fc.bias.detach().clone()
    replace_head(model, 3, rows=[4, 0, 2])
    assert model.fc.out_features == 3 and model.num_classes == 3
    assert torch.equal(model.fc.weight, old_w[[4, 0, 2]]) and torch.equal(model.fc.bias, old_b[[4, 0, 2]])
    torch.testing.assert_close(model(x), before[:, [4, 0, 2]])
    replace_head(model, 5)  # fresh head
    assert model.fc.out_features == 5 and model(x).shape == (3, 5)
    with pytest.raises(ConfigError):
        replace_head(model, 2, rows=[0])
    with pytest.raises(ConfigError):
        replace_head(cifar_resnet18(width=0.125, num_classes=0), 2, rows=[0, 1])


def test_head_rows_for():
    pre = ["a", "b", "c", "d"]
    assert head_rows_for(pre, ["d", "b"]) == [3, 1]
    assert head_rows_for(pre, ["a", "zzz"]) is None
    assert head_rows_for(None, ["a", "b"]) is None
    assert head_rows_for([], ["a", "b"]) is None


# ----------------------------------------------------------------------------- locating a backbone


@pytest.fixture
def isolated_backbone_search(tmp_path, monkeypatch):
    work = tmp_path / "cwd" / "repo"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("METAVOTE_BACKBONE", raising=False)
    # the repo fallback is <weights.py>.parents[4]/shared/pretrained: point it into tmp_path
    monkeypatch.setattr(mvweights, "__file__", str(tmp_path / "fake" / "src" / "metavote" / "models" / "weights.py"))
    return tmp_path


def test_locate_backbone_lists_places(isolated_backbone_search):
    tmp = isolated_backbone_search
    with pytest.raises(CheckpointError) as info:
        locate_backbone()
    msg = str(info.value)
    assert "looked in" in msg and "METAVOTE_BACKBONE" in msg
    assert str(tmp / "cwd" / "shared" / "pretrained" / mvmodels.DEFAULT_BACKBONE) in msg
    assert str(tmp / "shared" / "pretrained" / mvmodels.DEFAULT_BACKBONE) in msg


def test_locate_backbone_order(isolated_backbone_search, monkeypatch):
    tmp = isolated_backbone_search
    ds = synthetic_dataset()
    with pytest.raises(CheckpointError, match="does not exist"):
        locate_backbone(tmp / "missing.safetensors")
    shared = tiny_backbone_file(tmp / "cwd" / "shared" / "pretrained" / mvmodels.DEFAULT_BACKBONE, ds)
    assert locate_backbone() == shared
    env = tiny_backbone_file(tmp / "env.safetensors", ds)
    monkeypatch.setenv("METAVOTE_BACKBONE", str(env))
    assert locate_backbone() == env
    explicit = tiny_backbone_file(tmp / "explicit.safetensors", ds)
    assert locate_backbone(explicit) == explicit


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.skipif(
    not SHARED_BACKBONE.exists() or not (SHARED_DATA / "cifar100").is_dir(),
    reason=f"needs the shared CIFAR-100 ({SHARED_DATA / 'cifar100'}) and backbone ({SHARED_BACKBONE}); absent on this machine",
)
def test_shared_cifar100_and_backbone_accuracy():
    from metavote.data import load_dataset
    from metavote.training import evaluate

    ds = load_dataset("cifar100", data=SHARED_DATA)
    assert ds.train_images.shape == (50000, 32, 32, 3) and ds.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.train_labels, minlength=100).tolist() == [500] * 100
    assert np.bincount(ds.test_labels, minlength=100).tolist() == [100] * 100
    assert ds.num_classes == 100 and ds.classes[:3] == ["apple", "aquarium_fish", "baby"]
    assert json.loads((SHARED_DATA / "cifar100" / "classes.json").read_text()) == ds.classes

    model, meta = load_backbone(SHARED_BACKBONE, dataset=ds)
    assert meta["arch"] == "cifar_resnet18" and meta["width"] == 0.5 and model.num_classes == 100
    assert meta["classes"] == ds.classes  # filled from the dataset the file names
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:  # the first 20 test images of every class: 2000 images, a standard error of 1 point
        pick = np.concatenate([np.flatnonzero(ds.test_labels == c)[:20] for c in range(100)])
        acc = evaluate(model, ds.test_images[pick], ds.test_labels[pick])
    finally:
        torch.set_num_threads(threads)
    assert abs(acc - float(meta["test_acc"])) <= 0.031, (acc, meta["test_acc"])
