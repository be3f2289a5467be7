"""The method registry, the one profile system, and the model interface shared code relies on."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from metavote.cli import build_parser
from metavote.errors import ConfigError
from metavote.methods import IFP, METHODS, MVP, Method, RandomPruning, conventional_method, create_method, method_settings, register
from metavote.models import cifar_resnet18, create_model, replace_head, vision_transformer
from metavote.profiles import PROFILES, get_profile


def test_registry_holds_every_method_with_its_traits():
    assert {"ifp", "mvp", "random", "random-paper", "ahnp"} <= set(METHODS)
    assert METHODS["ifp"] is IFP and METHODS["mvp"] is MVP and METHODS["random"] is RandomPruning
    assert MVP.needs_zoo and not IFP.needs_zoo and not RandomPruning.needs_zoo
    assert IFP().requirements() == {"units", "probes"} and IFP(importance="magnitude").requirements() == {"units"}
    assert RandomPruning().requirements() == {"units"} and METHODS["ahnp"]().requirements() == {"units", "heads"}
    assert METHODS["power"]().requirements() == {"tokens"}


def test_settings_are_keyword_only_validated_and_named():
    with pytest.raises(TypeError):
        IFP(0.8, 200)  # positional settings are refused: every setting says what it is
    ifp = create_method("ifp", ratio=0.8, iterations=200, batch_size=64, lr=None)  # None means the default
    assert ifp == IFP(ratio=0.8, iterations=200, batch_size=64) and ifp.lr == 0.005 and ifp.label == "IFP (J=200)"
    assert IFP().iterations == 1000 and MVP().iterations == 100 and MVP().neighbours == 3  # the paper's defaults, once
    with pytest.raises(ConfigError, match="ifp has no setting.s. neighbours; it takes ratio"):
        create_method("ifp", neighbours=3)
    with pytest.raises(ConfigError, match="unknown method 'obd'; choose from ahnp, dlth, ifp, iht-reptile, mest, mvp, nearest, power, "
                                          "random, random-paper, tp-iterative, tp-magnitude, tp-taylor, uvc"):
        create_method("obd")
    for bad, match in (({"ratio": 1.0}, "ratio"), ({"iterations": -1}, "iterations"), ({"lr": 0}, "learning rate"),
                       ({"importance": "magic"}, "unknown importance")):
        with pytest.raises(ConfigError, match=match):
            create_method("ifp", **bad)
    assert "temperature" in method_settings("mvp") and "importance" not in method_settings("mvp")
    assert ifp.settings() == {"ratio": 0.8, "iterations": 200, "lr": 0.005, "batch_size": 64, "seed": None, "optimizer": "sgd", "refresh_bn": 5, "align": 1,
                              "importance": "activation",
                              "step_fraction": 0.2, "prune_until": 0.6, "importance_batches": 2}


def test_a_new_method_is_one_registered_class(monkeypatch):
    monkeypatch.setattr("metavote.methods.base.METHODS", dict(METHODS))
    from metavote.methods import base

    @register
    @dataclasses.dataclass(kw_only=True)
    class Keep(Method):
        key = "keep-first"
        strength: float = 1.0

        def prune(self, backbone, data, zoo, head_rows, costs, seed, prepared, progress):
            raise NotImplementedError

    assert base.METHODS["keep-first"] is Keep and create_method("keep-first", strength=2.0).strength == 2.0
    assert "keep-first" not in METHODS  # the real registry is untouched by this test


def test_one_profile_system_feeds_zoo_and_bench():
    from metavote.bench import main_methods

    cpu, paper = get_profile("cpu"), get_profile("paper")
    assert set(PROFILES) == {"paper", "cpu", "vit-paper", "vit-cpu", "lite0-cpu"}
    lite = get_profile("lite0-cpu")  # a profile that names its backbone and input size
    assert (lite.backbone, lite.image_size, lite.upper_bound, lite.settings("tp-taylor")["iterations"]) == ("efficientnet-lite0", 96, "tp-taylor", 200)
    assert [m.label for m in main_methods(lite, peers=True)][:4] == ["MVP (J=20)", "Torch-Pruning Taylor (J=200)", "Torch-Pruning Taylor (J=20)",
                                                                     "random (J=20)"]  # its zoo's recipe, and IFP among the pipelines
    # the zoo's recipe and the bench's upper bound are one: IFP at 10 J
    assert cpu.settings("ifp") == {"ratio": 0.8, "iterations": 200, "batch_size": 64, "lr": 0.01}
    assert paper.settings("ifp") == {"ratio": 0.9, "iterations": 1000, "batch_size": 128, "lr": 0.005}
    assert paper.settings("mvp") == {"ratio": 0.9, "iterations": 100, "batch_size": 128, "lr": 0.01}
    assert get_profile("paper", lr=0.02).settings("ifp")["lr"] == 0.02  # a new lr applies to every method
    assert get_profile("cpu", iterations=50).settings("ifp")["iterations"] == 500
    vit = get_profile("vit-cpu", temperature=0.5)  # MVP's tau, beside the profile's own MVP settings
    assert vit.settings("mvp")["temperature"] == 0.5 and vit.settings("mvp")["optimizer"] == "adamw"
    assert "temperature" not in vit.settings("ahnp") and "temperature" not in get_profile("cpu").settings("mvp")
    assert get_profile("vit-cpu").settings("nearest")["optimizer"] == "adamw"  # the nearest record fine-tunes as MVP does
    with pytest.raises(ConfigError, match="unknown profile"):
        get_profile("gpu")
    with pytest.raises(ConfigError, match="unknown budget setting"):
        get_profile("cpu", ifp_lr=0.1)


def test_cli_choices_come_from_the_registries():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    prune = next(a for a in sub["prune"]._actions if a.dest == "method")
    assert prune.choices == ["auto", *sorted(METHODS)] and prune.default == "auto"
    build = next(a for a in next(a for a in sub["zoo"]._actions if a.dest == "zoo_command").choices["build"]._actions if a.dest == "method")
    assert build.choices == sorted(METHODS) and build.default is None  # None: the profile's conventional method the model runs
    profile = next(a for a in sub["bench"]._actions if a.dest == "profile")
    assert profile.choices == list(PROFILES)


def test_methods_refuse_a_model_without_the_capability_they_need():
    vit = vision_transformer(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2, mlp_ratio=1.0, num_classes=3)
    resnet = cifar_resnet18(width=0.125, num_classes=3)
    assert vit.capabilities() == {"units", "heads", "tokens"} and resnet.capabilities() == {"units", "probes", "batchnorm"}
    with pytest.raises(ConfigError, match="ifp needs a model with a norm or layer to measure importance at in every group"):
        IFP(iterations=1).run(vit, data=None)  # heads have no probe: activation importance cannot score them
    for key in ("ahnp", "uvc"):
        with pytest.raises(ConfigError, match=f"{key} needs a model with attention heads; this ResNet has none"):
            create_method(key, iterations=1).run(resnet, data=None)
    with pytest.raises(ConfigError, match="power needs a model with token pruning"):
        create_method("power", iterations=1).run(resnet, data=None)


def test_a_zoo_is_built_by_a_conventional_method_the_model_can_run():
    """The profile's own (IFP for ResNets, AHNP for ViTs) when the model can run it, else AHNP, IFP, IFP by magnitude."""
    from torch import nn

    from metavote.models import wrap_model

    vit = vision_transformer(img_size=32, patch_size=8, embed_dim=24, depth=1, num_heads=2, mlp_ratio=1.0, num_classes=3)
    resnet = cifar_resnet18(width=0.125, num_classes=3)
    plain = wrap_model(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(8, 3)), input_size=(3, 16, 16))  # no norm: activation importance reads the convolutions
    chosen = {}
    for name, model in (("vit", vit), ("resnet", resnet), ("plain", plain)):
        for profile in ("cpu", "vit-cpu"):
            method, why = conventional_method(model, get_profile(profile), iterations=30)
            chosen[name, profile] = (method.key, getattr(method, "importance", None))
            assert method.iterations == 30 and method.ratio == 0.8 and why
    assert chosen == {("vit", "cpu"): ("ahnp", None), ("vit", "vit-cpu"): ("ahnp", None), ("resnet", "cpu"): ("ifp", "activation"),
                      ("resnet", "vit-cpu"): ("ifp", "activation"), ("plain", "cpu"): ("ifp", "activation"),
                      ("plain", "vit-cpu"): ("ifp", "activation")}
    method, why = conventional_method(vit, get_profile("cpu"))
    assert why == "ahnp: the cpu profile's ifp needs a norm or layer to measure importance at in every group (else use magnitude importance), which this model lacks"
    assert conventional_method(vit, get_profile("cpu"), importance="magnitude")[0].key == "ifp"  # naming an importance names IFP
    with pytest.raises(ConfigError, match="no conventional pruner runs on this VisionTransformer: it lacks a norm"):
        conventional_method(vit, get_profile("cpu"), importance="activation")


def test_ahnp_never_empties_a_group_that_cannot_run_empty():
    """BEiT with 3 heads at r = 0.5: AHNP's scores may all fall in one block; a traced block keeps its best head."""
    from metavote.methods.ahnp import global_removal
    from metavote.models.units import Slot, UnitGroup
    from metavote.pruning import kind_targets, target_widths

    groups = [UnitGroup(f"block{i}.attention", 3, (Slot(f"block{i}.q", width=4),), kind="head") for i in range(4)]
    scores = {g.name: torch.tensor([0.9, 0.8, 0.7]) for g in groups}
    scores["block0.attention"] = torch.tensor([0.01, 0.02, 0.03])  # every head of block 0 below the threshold, the lowest overall
    scores["block1.attention"] = torch.tensor([0.05, 0.9, 0.9])
    keep = global_removal(scores, groups, kind_targets(groups, 0.5), threshold=0.1)
    assert {k: v.tolist() for k, v in keep.items()} == {"block0.attention": [2], "block1.attention": [1, 2], "block2.attention": [0, 1, 2],
                                                        "block3.attention": [0, 1, 2]}  # 4 below threshold, block 0's last kept: 9 of a target 8
    emptiable = [dataclasses.replace(g, can_be_empty=True) for g in groups]
    assert global_removal(scores, emptiable, kind_targets(emptiable, 0.5), threshold=0.1)["block0.attention"].tolist() == []
    # the target is what the per-group widths keep (2 of 3 per block at r = 0.5: 8, where round(0.5 * 12) = 6), so AHNP's
    # record has every other method's size; a block that cannot run empty counts one head
    assert kind_targets(groups, 0.5) == {"head": 8} == {"head": sum(target_widths(groups, 0.5).values())}
    assert kind_targets(groups, 0.9) == {"head": 4} and kind_targets(emptiable, 0.9) == {"head": 1}


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_the_model_interface(family):
    torch.manual_seed(0)
    model = cifar_resnet18(width=0.125, num_classes=7) if family == "resnet" else \
        vision_transformer(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=7)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, model.forward_head(model.forward_features(x)))
        assert torch.equal(model.get_classifier()(model.features(x)), logits)
    assert model.features(x).shape == (2, model.num_features) and model.num_classes == 7
    rebuilt = create_model(model.config, 7)  # the config rebuilds the same architecture
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model.pretrained_cfg["input_size"] == (3, 32, 32) and model.pretrained_cfg["classifier"] == model.classifier_name
    old = model.get_classifier().weight.detach().clone()
    replace_head(model, 2, [4, 1])
    assert torch.equal(model.get_classifier().weight, old[[4, 1]]) and model.num_classes == 2
    assert model.classifier_keys() == {f"{model.classifier_name}.weight", f"{model.classifier_name}.bias"}
    model.reset_classifier(0)
    assert model.num_classes == 0 and model(x).shape == (2, model.num_features)

