"""Traced unit groups: any classifier, Hugging Face checkpoints and folders.

The contract every architecture keeps (extraction equal to masking, exact parameters, fewer FLOPs,
a zoo record, MVP and the nearest record, the standalone file, ONNX) is walked over every image
classifier transformers lists in ``tests/test_hf_walk.py``; ``ARCHS`` here are the tiny configs of
the architectures the tests below (and ``benchmarks/any-model/traced_archs.py``) use by name.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import randomised
from metavote.cli import main
from metavote.deploy import load_pruned, save_pruned
from metavote.errors import ConfigError
from metavote.methods import create_method, random_subnetwork
from metavote.models import TracedModel, cifar_resnet18, create_model, register_model, vision_transformer, wrap_model
from metavote.pruning import SubNetwork, TensorIndex, extract, mask, register_cutter
from metavote.pruning.surgery import CUTTERS

transformers = pytest.importorskip("transformers", reason="the Hugging Face tests need the hf extra (pip install '.[hf]')")
transformers.utils.logging.disable_progress_bar()

# Tiny configs of the architectures the issue names, sized so that every group keeps a unit at r = 0.8
ARCHS = {
    "resnet-50": {"model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 16, 32, 32], "depths": [1, 1, 1, 1],
                  "layer_type": "bottleneck"},
    "mobilenet-v2": {"model_type": "mobilenet_v2", "depth_multiplier": 0.35, "image_size": 32},
    "efficientnet-b0": {"model_type": "efficientnet", "image_size": 32, "width_coefficient": 1.0, "depth_coefficient": 0.1,
                        "hidden_dim": 1280},
    "regnet-y": {"model_type": "regnet", "embedding_size": 16, "hidden_sizes": [32, 64], "depths": [1, 1], "groups_width": 8,
                 "layer_type": "y"},
    "convnext": {"model_type": "convnext", "hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2},
    "vit": {"model_type": "vit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64},
    "deit": {"model_type": "deit", "image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 4, "intermediate_size": 64},
    "swin": {"model_type": "swin", "image_size": 32, "patch_size": 2, "embed_dim": 32, "depths": [1, 1], "num_heads": [4, 8],
             "window_size": 4},
}

def hf(arch: str, num_classes: int = 4) -> TracedModel:
    torch.manual_seed(0)
    model = create_model({"arch": "hf", "hf_config": ARCHS[arch], "wrap": {"input_size": [3, 32, 32]}}, num_classes)
    for m in model.modules():  # non-trivial layer scales, as a trained model has
        for name, p in m.named_parameters(recurse=False):
            if p is not None and not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                with torch.no_grad():
                    p.add_(0.5)
    return randomised(model)


def expected_parameters(model: TracedModel, subnet) -> int:
    """The parameter count the kept units say: every tensor a group touches shrinks along its unit dims."""
    index = TensorIndex(model, model.unit_groups()).indices(subnet)
    total = 0
    for key, p in model.named_parameters():
        shape = list(p.shape)
        for dim, idx in index.get(key, {}).items():
            shape[dim] = len(idx)
        total += int(np.prod(shape))
    return total


def test_what_the_tracer_leaves_whole_and_why():
    vit, convnext = hf("vit"), hf("convnext")
    assert list(vit.trace().skipped.values()) == ["the token width of an attention model (heads and MLP nodes are pruned instead)"]
    heads = [g for g in vit.unit_groups() if g.kind == "head"]
    assert [g.name for g in heads] == ["net.vit.layers.0.attention", "net.vit.layers.1.attention"] and heads[0].size == 4
    assert {(s.module.rsplit(".", 1)[1], s.role, s.width) for s in heads[0].slots} == {
        ("q_proj", "out", 8), ("k_proj", "out", 8), ("v_proj", "out", 8), ("o_proj", "in", 8)}
    # ConvNeXt's residual stream is normalised across channels: cutting a channel changes the others
    assert all("normalisation across these channels" in why for why in convnext.trace().skipped.values())
    assert len(convnext.trace().skipped) == 2
    # ConvNeXt V2's MLP has a global response normalisation (each channel over the mean of all): only
    # the numerical check sees it, as its scale starts at zero; nothing is left to prune, and methods say so
    ARCHS["convnext-v2"] = ARCHS["convnext"] | {"model_type": "convnextv2"}
    try:
        v2 = hf("convnext-v2")
    finally:
        del ARCHS["convnext-v2"]
    assert v2.unit_groups() == [] and len(v2.trace().skipped) == 4 and "units" not in v2.capabilities()
    with pytest.raises(ConfigError, match="random needs a model with prunable unit groups"):
        create_method("random").run(v2, data=None)
    # a Swin head is also a column of its relative-position table; a grouped convolution's unit is a group
    swin_head = next(g for g in hf("swin").unit_groups() if g.kind == "head")
    assert any(s.role == "param" and s.dim == 1 and s.width == 1 for s in swin_head.slots)
    regnet = hf("regnet-y").unit_groups()
    assert any(g.size == 4 and all(s.width == 8 for s in g.slots) for g in regnet)  # 32 channels in groups of 8


def test_traced_groups_equal_the_hand_written_ones():
    """The documented mapping: module names gain the wrapper's ``net.`` and a group is named after its
    first producer (``layer2`` -> ``net.layer2.0.downsample.0``, ``blocks.0.mlp`` -> ``net.blocks.0.mlp.fc1``);
    the head module is the wrapper's ``head``; units, slots, probes (in order), kinds and order are the same."""
    for hand in (randomised(cifar_resnet18(width=0.125, num_classes=3)),
                 vision_transformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=3)):
        traced = wrap_model(copy.deepcopy(hand), hand.classifier_name, input_size=hand.input_size, mean=(0, 0, 0), std=(1, 1, 1))
        rename = {f"net.{hand.classifier_name}": "head"}
        mine, theirs = hand.unit_groups(), traced.unit_groups()
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            slots = {(rename.get(f"net.{s.module}", f"net.{s.module}"), s.role, s.width, s.copies) for s in a.slots}
            assert (a.size, a.kind, a.can_be_empty) == (b.size, b.kind, b.can_be_empty), a.name
            assert slots == {(s.module, s.role, s.width, s.copies) for s in b.slots}, a.name
            assert tuple(f"net.{p}" for p in a.probes) == b.probes and tuple(f"net.{p}" for p in a.producers) == b.producers


def test_a_plain_module_with_a_custom_layer(tmp_path):
    class Scale(nn.Module):  # a per-channel scale the library does not know: a bare parameter, cut along its channels
        def __init__(self, n: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.linspace(0.5, 1.5, n))

        def forward(self, x):
            return x * self.weight[:, None, None]

    @register_model("tiny_custom_cnn")
    def tiny_custom_cnn(num_classes: int = 3, width: int = 8) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), Scale(width), nn.PReLU(width), nn.Conv2d(width, width, 3, padding=1),
                             nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def wrapped():
        torch.manual_seed(0)
        return wrap_model(tiny_custom_cnn(), input_size=(3, 16, 16), arch="tiny_custom_cnn", settings={"width": 8})

    # the tracer knows a PReLU couples channels, metavote has no cutter for it until one is registered
    with pytest.raises(ConfigError, match=r"cannot prune through net.2 \(PReLU\): no cutter for this layer type"):
        wrapped().unit_groups()

    def cut_prelu(m, out_idx, in_idx):
        if out_idx is not None:
            m.weight = nn.Parameter(m.weight.detach()[out_idx].clone())
            m.num_parameters = len(out_idx)

    register_cutter(nn.PReLU, cut_prelu)
    try:
        model = wrapped()
        groups = model.unit_groups()
        assert [g.name for g in groups] == ["net.0", "net.3"] and model.capabilities() == {"units", "probes", "batchnorm"}
        assert ("net.1.weight", "param") in {(s.module, s.role) for s in groups[0].slots}
        subnet = random_subnetwork(groups, 0.5, seed=0)
        small = extract(model, subnet).eval()
        x = torch.rand(2, 3, 16, 16)
        with torch.no_grad():
            assert torch.allclose(small(x), mask(model, subnet).eval()(x), atol=1e-6)
        save_pruned(tmp_path / "custom.safetensors", small, subnet, ["a", "b", "c"])  # rebuilt from the registered constructor
        with torch.no_grad():
            assert torch.equal(load_pruned(tmp_path / "custom.safetensors")(x), small(x))

        def forgetful(m, out_idx, in_idx):  # a cutter that does not cut
            pass

        register_cutter(nn.PReLU, forgetful)
        with pytest.raises(ConfigError, match=r"the cutter of PReLU left net.2's weight at \(8,\), expected 4 outputs"):
            extract(model, subnet)
    finally:
        CUTTERS.pop(nn.PReLU, None)
    with pytest.raises(ConfigError, match="cannot be rebuilt: register its constructor"):
        _ = wrap_model(tiny_custom_cnn(), input_size=(3, 16, 16)).config


def test_bad_heads_and_bad_classifiers_are_one_line():
    settings = dict(ARCHS["vit"])
    net = transformers.AutoModelForImageClassification.from_config(transformers.AutoConfig.for_model(settings.pop("model_type"), **settings))
    with pytest.raises(ConfigError, match=r"net.vit.layers.0.attention has 3 heads, which do not divide the 32 channels"):
        wrap_model(net, "classifier", input_size=(3, 32, 32), heads={"vit.layers.0.attention": 3}).unit_groups()
    with pytest.raises(ConfigError, match="has no module 'fc' to use as its classifier"):
        wrap_model(nn.Sequential(nn.Linear(3, 2)), "fc")
    with pytest.raises(ConfigError, match="is a ReLU, not an nn.Linear"):
        wrap_model(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), "1")


# ----------------------------------------------------------------------------- Hugging Face folders


def save_hf(folder: Path, arch: str, classes: list[str]) -> Path:
    torch.manual_seed(0)
    settings = dict(ARCHS[arch])
    config = transformers.AutoConfig.for_model(settings.pop("model_type"), num_labels=len(classes),
                                               id2label=dict(enumerate(classes)), **settings)
    transformers.AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
                                                                 "size": {"height": 32, "width": 32}}))
    return folder


def test_a_hugging_face_folder_loads_with_its_labels_and_preprocessing(tmp_path):
    from metavote.models import load_backbone

    folder = save_hf(tmp_path / "vit", "vit", ["bus", "kite", "otter", "tram"])
    model, meta = load_backbone(folder)
    assert isinstance(model, TracedModel) and meta["classes"] == ["bus", "kite", "otter", "tram"] and meta["arch"] == "hf"
    assert model.input_size == (3, 32, 32) and model.pretrained_cfg["std"] == [0.25, 0.25, 0.25]
    assert load_backbone(folder / "model.safetensors")[1]["fingerprint"] == meta["fingerprint"]
    reference = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # the wrapper normalises inside: images in [0, 1]
        assert torch.allclose(model.eval()(x), reference((x - 0.5) / 0.25).logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["convnext", "vit"])
def test_prune_and_export_a_hugging_face_folder_from_the_command_line(arch, tmp_path, capsys):
    from test_deploy import BUDGET, run, write_image_folder

    folder = write_image_folder(tmp_path / "photos", classes=("bus", "kite", "otter", "tram"))
    backbone = save_hf(tmp_path / arch, arch, ["bus", "kite", "otter", "tram"])
    zoo = tmp_path / "zoo"
    importance = ["--importance", "magnitude"] if arch == "vit" else []  # heads have no activation probe
    rc, out, err = run(capsys, ["zoo", "build", "--zoo", zoo, "--backbone", backbone, "--dataset", folder, "--tasks", "3", "--n-way", "2",
                                "--workers", "1", *importance, *BUDGET])
    assert rc == 0 and "built 3" in out, err
    rc, out, err = run(capsys, ["zoo", "ls", "--zoo", zoo])
    assert rc == 0 and f"backbone hf {ARCHS[arch]['model_type']}" in out and out.count(" ok ") == 3, err
    model = tmp_path / "pruned.safetensors"
    rc, out, err = run(capsys, ["prune", "--zoo", zoo, "--backbone", backbone, "--dataset", folder, "--classes", "kite,tram",
                                "--out", model, *BUDGET])
    assert rc == 0 and "head: pretrained" in out and model.exists(), err  # the checkpoint's labels give the head's rows
    rc, out, err = run(capsys, ["export", "--model", model, "--onnx", tmp_path / "pruned.onnx"])
    assert rc == 0 and "ONNX Runtime and PyTorch agree" in out, err
    rc, out, err = run(capsys, ["predict", "--model", tmp_path / "pruned.onnx", *sorted((folder / "kite").glob("*.png"))[:1]])
    assert rc == 0 and ("kite" in out or "tram" in out), err


def test_a_pruned_vit_goes_back_to_a_save_pretrained_folder_where_its_config_can_say_so(tmp_path, capsys):
    from test_deploy import one_line_error

    model = hf("vit")
    subnet = random_subnetwork(model.unit_groups(), 0.5, seed=0)  # 2 of 4 heads, 32 of 64 nodes in every block
    save_pruned(tmp_path / "vit.safetensors", extract(model, subnet), subnet, ["a", "b", "c", "d"], method="random")
    rc = main(["export", "--model", str(tmp_path / "vit.safetensors"), "--hf-folder", str(tmp_path / "vit-hf")])
    assert rc == 0 and "a save_pretrained folder" in capsys.readouterr().out
    reference = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "vit-hf").eval()  # plain transformers
    config = reference.config
    assert (config.num_attention_heads, config.head_dim, config.intermediate_size) == (2, 8, 32) and config.id2label[3] == "d"
    x = torch.rand(2, 3, 32, 32)
    pruned = load_pruned(tmp_path / "vit.safetensors")
    with torch.no_grad():  # transformers takes normalised images, metavote's models RGB in [0, 1]
        assert torch.allclose(reference(pruned.normalize(x)).logits, pruned(x), atol=1e-5)
    # different counts in different blocks, or a CNN: one line, nothing written
    groups = model.unit_groups()
    heads = [g.name for g in groups if g.kind == "head"]
    uneven = SubNetwork({g.name: np.arange(1 + heads.index(g.name) if g.kind == "head" else g.size // 2) for g in groups},
                        {g.name: g.size for g in groups})  # 1 head in the first block, 2 in the second
    save_pruned(tmp_path / "uneven.safetensors", extract(model, uneven), uneven, ["a", "b", "c", "d"])
    assert "heads and [32] MLP nodes in its blocks" in one_line_error(capsys, ["export", "--model", tmp_path / "uneven.safetensors",
                                                                                "--hf-folder", tmp_path / "uneven-hf"])
    cnn = hf("mobilenet-v2")
    subnet = random_subnetwork(cnn.unit_groups(), 0.5, seed=0)
    save_pruned(tmp_path / "cnn.safetensors", extract(cnn, subnet), subnet, ["a", "b", "c", "d"])
    assert "a mobilenet_v2 config cannot say a pruned model's sizes" in one_line_error(
        capsys, ["export", "--model", tmp_path / "cnn.safetensors", "--hf-folder", tmp_path / "cnn-hf"])
    assert not (tmp_path / "uneven-hf").exists() and not (tmp_path / "cnn-hf").exists()


def test_bad_hugging_face_folders_are_one_line(tmp_path, capsys):
    from test_deploy import one_line_error

    folder = save_hf(tmp_path / "vit", "vit", ["a", "b"])
    zoo = ["zoo", "build", "--zoo", tmp_path / "zoo", "--tasks", "1", "--quiet"]
    (tmp_path / "no-weights").mkdir()
    (tmp_path / "no-weights" / "config.json").write_text((folder / "config.json").read_text())
    assert "has a config.json but no weights" in one_line_error(capsys, [*zoo, "--backbone", tmp_path / "no-weights"])
    text = Path(tempfile.mkdtemp(dir=tmp_path))  # a text model's config: transformers has no image classifier for it
    transformers.AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(text)
    (text / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    assert "'bert' model is not an image classifier" in one_line_error(capsys, [*zoo, "--backbone", text])
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "bigger").mkdir()
    (tmp_path / "bigger" / "config.json").write_text(json.dumps(config | {"intermediate_size": 96}))
    (tmp_path / "bigger" / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    assert "the weights do not" in one_line_error(capsys, [*zoo, "--backbone", tmp_path / "bigger"])
    assert not (tmp_path / "zoo").exists()  # nothing half-written


def test_pretrain_a_hugging_face_classifier_into_a_save_pretrained_folder(tmp_path):
    from helpers import synthetic_dataset

    from metavote.models import load_backbone
    from metavote.pretrain import PretrainConfig, pretrain
    from metavote.training import evaluate

    dataset = synthetic_dataset()
    config = PretrainConfig(arch="hf", hf_config=ARCHS["convnext"], epochs=2, batch_size=8, lr=0.02, cutout=8)
    result = pretrain(dataset, tmp_path / "convnext", config, progress=False)
    model, meta = load_backbone(tmp_path / "convnext")  # transformers' own folder, read back as a traced model
    assert meta["classes"] == dataset.classes and model.input_size == (3, 32, 32)
    assert model.pretrained_cfg["mean"] == pytest.approx([0.5071, 0.4865, 0.4409])
    assert evaluate(model, dataset.test_images, dataset.test_labels) == result.accuracy
    assert json.loads((tmp_path / "convnext" / "metavote.json").read_text())["history"] == result.history
    with pytest.raises(ConfigError, match="needs arch 'hf' and its hf_config, together"):
        pretrain(dataset, tmp_path / "x", PretrainConfig(hf_config=ARCHS["convnext"]), progress=False)
