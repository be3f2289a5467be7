"""Every ``*ForImageClassification`` class transformers lists, walked as timm's tests walk ``list_models()``.

Each class is built from its tiny config (``tests/hf_tiny_configs.py``, random init) and either
prunes end to end at r = 0.5 (the kinds of units its trace should find; a random and a voted Omega
extracted equal the masked dense model and hold the parameters their units say, still described,
with fewer FLOPs; a zoo of two records round-trips; MVP and the nearest record from it; the
standalone file reloads; ONNX Runtime agrees with PyTorch), or is refused by a
:class:`~metavote.errors.MetavoteError` of one line that says what and why, with nothing written.
Any other exception (a traceback) fails, and so does a type that has no tiny config here: a new
transformers version's classifiers are walked as soon as it lists them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import randomised, synthetic_dataset
from hf_tiny_configs import TINY, VARIANTS, tiny
from metavote.deploy import export_onnx, load_pruned, save_pruned
from metavote.errors import ConfigError, MetavoteError
from metavote.methods import PruneResult, create_method, random_subnetwork, sample_by_votes, vote_counts
from metavote.models import TracedModel, create_model
from metavote.models.hf import scratch_init
from metavote.pruning import extract, mask, target_widths
from metavote.training import Costs, step_flops
from metavote.zoo import Zoo
from test_traced import expected_parameters

transformers = pytest.importorskip("transformers", reason="the Hugging Face tests need the hf extra (pip install '.[hf]')")
MAPPING = transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
CLASSES = [(t, c) for t, names in MAPPING.items() for c in ([names] if isinstance(names, str) else names)]

# What is refused, and a piece of its one line (the README table says the same); every other class prunes end to end
REFUSED = {
    "BitForImageClassification": "needs a model with prunable unit groups",  # every channel under a GroupNorm of several groups
    "ConvNextV2ForImageClassification": "needs a model with prunable unit groups",  # global response normalisation
    "CvtForImageClassification": "Torch-Pruning cannot build its dependency graph",
    "DinatForImageClassification": "it needs the natten package",
    "DeiTForImageClassificationWithTeacher": "averages 2 classifier heads",
    "LevitForImageClassificationWithTeacher": "averages 2 classifier heads",
    "SwiftFormerForImageClassification": "averages 2 classifier heads",
    "ImageGPTForImageClassification": "does not run on its own input (3, 32, 32)",  # colour-cluster ids, not RGB
    "Siglip2ForImageClassification": "does not run on its own input (3, 32, 32)",  # patches and a patch mask, not images
    "ShieldGemma2ForImageClassification": "B parameters, more than metavote builds",
    "TimmWrapperForImageClassification": "it needs the timm package",
}
# What the tracer finds in each that prunes (the kinds of its unit groups): a regression in the tracer shows here
HEADS_AND_NODES = ("beit", "clip", "data2vec-vision", "deit", "dinov2", "dinov2_with_registers", "donut-swin", "ijepa", "metaclip_2",
                   "perceiver", "pvt", "siglip", "swin", "swinv2", "vit", "vit_msn")
CHANNELS = ("efficientnet", "hgnet_v2", "mobilenet_v1", "mobilenet_v2", "mobilevitv2", "poolformer", "pp_lcnet", "pvt_v2", "regnet",
            "resnet", "textnet")
KINDS = {**dict.fromkeys(HEADS_AND_NODES, {"head", "node"}), **dict.fromkeys(CHANNELS, {"channel"}), "convnext": {"node"},
         "focalnet": {"node"}, "hiera": {"node"}, "levit": {"channel", "head"}, "mobilevit": {"channel", "head", "node"},
         "segformer": {"channel", "head"}}

def build(model_type: str, cls: str) -> TracedModel:
    settings, size = tiny(model_type, cls)
    torch.manual_seed(0)
    model = create_model({"arch": "hf", "hf_config": settings, "wrap": {"input_size": [3, size, size]}}, 3)
    scratch_init(model)  # Kaiming-normal convolutions: transformers' std 0.02 leaves a deep CNN's outputs all but constant
    for m in model.modules():  # non-trivial layer scales, as a trained model has
        for p in m.parameters(recurse=False):
            if not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                with torch.no_grad():
                    p.add_(0.5)
    return randomised(model)


def test_every_classifier_transformers_lists_has_a_tiny_config():
    firsts = {t: (names if isinstance(names, str) else names[0]) for t, names in MAPPING.items()}
    missing = [t for t in MAPPING if t not in TINY] + [c for t, c in CLASSES if c != firsts[t] and c not in VARIANTS]
    assert not missing, (f"transformers {transformers.__version__} lists image classifiers that tests/hf_tiny_configs.py has no tiny "
                         f"config for: {', '.join(missing)}; add one (TINY for a type, VARIANTS for another class of a type)")


def prune_end_to_end(model_type: str, cls: str, tmp_path) -> TracedModel:
    model = build(model_type, cls)
    groups = model.unit_groups()
    assert not groups or {g.kind for g in groups} == KINDS[model_type], (cls, {g.kind for g in groups})
    return check_contract(model, tmp_path, cls)


def check_contract(model: TracedModel, tmp_path, cls: str) -> TracedModel:
    """The contract of the module docstring, on any traced model that can be rebuilt from its config."""
    size = model.input_size[-1]
    groups = model.unit_groups()
    dataset = synthetic_dataset(num_classes=5, train_per_class=4, test_per_class=2, size=size)
    tasks = [dataset.task(dataset.classes[i:i + 3]) for i in range(3)]
    if not groups:  # what a method says of a model with nothing to prune
        create_method("random", ratio=0.5, iterations=1, batch_size=4).run(model, dataset.load_task(tasks[0]))
    records = [random_subnetwork(groups, 0.5, seed=s) for s in (1, 2)]
    voted = sample_by_votes(vote_counts(records), target_widths(groups, 0.5), seed=3)
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    for subnet in (records[0], voted):  # a random and a voted Omega
        small, masked = extract(model, subnet).eval(), mask(model, subnet).eval()
        with torch.no_grad():
            want = masked(x)
            assert (small(x) - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max())), cls
        assert sum(p.numel() for p in small.parameters()) == expected_parameters(model, subnet) < sum(p.numel() for p in model.parameters())
        assert [g.size for g in small.unit_groups()] == [len(subnet.kept[g.name]) for g in groups]  # shrunk, still described
    assert step_flops(small, 2) < step_flops(model, 2)

    meta = {"fingerprint": f"tiny-{cls}", "config": model.config, "arch": model.config["arch"]}
    with Zoo(tmp_path / "zoo", meta) as zoo:
        added = [zoo.add(task, PruneResult(extract(model, subnet), subnet, Costs(), 0.5, "random", {}))
                 for task, subnet in zip(tasks[:2], records)]
        loaded, subnet = zoo.load(added[0])
        with torch.no_grad():
            assert subnet.widths() == records[0].widths() and torch.equal(loaded.eval()(x), extract(model, records[0]).eval()(x))
        data = dataset.load_task(tasks[2])
        fast = dict(ratio=0.5, iterations=1, batch_size=4, bn_batches=1, refresh_bn=1)
        mvp = create_method("mvp", neighbours=zoo.records(), **fast).run(model, data, zoo, None)
        near = create_method("nearest", neighbours=zoo.records()[:1], **fast).run(model, data, zoo, None)
    assert mvp.subnet.widths() == target_widths(groups, 0.5) and near.subnet.widths() == records[0].widths()
    save_pruned(tmp_path / "m.safetensors", mvp.model, mvp.subnet, tasks[2].classes, method="mvp")
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "m.safetensors")(x), mvp.model.eval()(x))
    pytest.importorskip("onnxruntime", reason="ONNX needs the onnx extra")
    agreement = export_onnx(tmp_path / "m.safetensors", tmp_path / "m.onnx", check_images=x)
    assert agreement.ok, (cls, str(agreement))
    return model


@pytest.mark.parametrize("model_type,cls", CLASSES, ids=[c for _, c in CLASSES])
def test_every_hugging_face_classifier_prunes_end_to_end_or_is_refused_in_one_line(model_type, cls, tmp_path):
    if model_type not in TINY:
        pytest.fail(f"no tiny config for {model_type!r} in tests/hf_tiny_configs.py")
    if cls not in REFUSED:
        prune_end_to_end(model_type, cls, tmp_path)
        return
    with pytest.raises(MetavoteError) as refused:  # anything else is a traceback, and fails
        prune_end_to_end(model_type, cls, tmp_path)
    message = str(refused.value)
    assert "\n" not in message and len(message) <= 400 and REFUSED[cls] in message, message
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_model_that_does_not_run_on_its_own_input_is_one_line(tmp_path):
    """A config whose layers do not fit together (EfficientNet's ``hidden_dim`` is the size of its
    last BatchNorm, and must be its top convolution's width): built, but its forward pass fails."""
    settings, _ = tiny("efficientnet")
    model = create_model({"arch": "hf", "hf_config": settings | {"hidden_dim": 64}, "wrap": {"input_size": [3, 32, 32]}}, 3)
    with pytest.raises(ConfigError, match=r"EfficientNetForImageClassification does not run on its own input \(3, 32, 32\): "
                                          r"RuntimeError: running_mean should contain"):
        model.unit_groups()


def save_folder(folder, model_type: str, classes: list[str], **overrides):
    """A ``save_pretrained`` folder of a tiny config (random init), with a preprocessor of its input size."""
    import json

    settings, size = tiny(model_type)
    settings = dict(settings | overrides)
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(settings.pop("model_type"), num_labels=len(classes), id2label=dict(enumerate(classes)), **settings)
    transformers.AutoModelForImageClassification.from_config(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3,
                                                                 "size": {"height": size, "width": size}}))
    return folder


@pytest.mark.parametrize("model_type", ["swinv2", "focalnet"])
def test_the_reported_tracebacks_and_hang_prune_from_the_command_line(model_type, tmp_path, capsys):
    """Swin V2 (a per-head logit scale and position-bias MLP: a traceback) and FocalNet (Torch-Pruning's
    search never settled: a hang) from a save_pretrained folder: zoo build, prune --out, export --onnx, predict."""
    from test_deploy import BUDGET, run, write_image_folder

    classes = ["bus", "kite", "otter", "tram"]
    images = write_image_folder(tmp_path / "photos", classes=tuple(classes), per_class=6)
    backbone, zoo, model = save_folder(tmp_path / model_type, model_type, classes), tmp_path / "zoo", tmp_path / "pruned.safetensors"
    rc, out, err = run(capsys, ["zoo", "build", "--zoo", zoo, "--backbone", backbone, "--dataset", images, "--tasks", "2", "--n-way", "2",
                                "--workers", "1", "--importance", "magnitude", *BUDGET])
    assert rc == 0 and "built 2" in out, err
    rc, out, err = run(capsys, ["prune", "--zoo", zoo, "--backbone", backbone, "--dataset", images, "--classes", "kite,tram", "--out", model, *BUDGET])
    assert rc == 0 and model.exists(), err
    rc, out, err = run(capsys, ["export", "--model", model, "--onnx", tmp_path / "pruned.onnx"])
    assert rc == 0 and "ONNX Runtime and PyTorch agree" in out, err
    rc, out, err = run(capsys, ["predict", "--model", tmp_path / "pruned.onnx", *sorted((images / "kite").glob("*.png"))[:1]])
    assert rc == 0 and ("kite" in out or "tram" in out), err


def test_a_folder_whose_model_does_not_run_is_one_line_from_the_command_line(tmp_path, capsys):
    from test_deploy import one_line_error, write_image_folder

    images = write_image_folder(tmp_path / "photos", classes=("bus", "kite"), per_class=2)
    broken = save_folder(tmp_path / "broken", "efficientnet", ["bus", "kite"], hidden_dim=64)  # its last BatchNorm does not fit
    err = one_line_error(capsys, ["zoo", "build", "--zoo", tmp_path / "zoo", "--backbone", broken, "--dataset", images, "--tasks", "1",
                                  "--n-way", "2", "--quiet"])
    assert "does not run on its own input (3, 32, 32)" in err and "running_mean" in err
    assert not (tmp_path / "zoo").exists()


def test_a_trace_over_its_time_budget_is_one_line():
    from metavote.models.trace import trace_unit_groups

    model = build("vit", "ViTForImageClassification")
    with pytest.raises(ConfigError, match=r"tracing ViTForImageClassification ran over its 0 s budget in Torch-Pruning's dependency graph"):
        trace_unit_groups(model, torch.rand(2, 3, 32, 32), "head", budget=0)


def test_the_tracer_reaches_the_cutters_without_importing_pruning():
    """Issue 30, item 4: ``models/trace.py`` and ``pruning/surgery.py`` both import ``models/cutting.py``;
    neither imports the other, and the old names still import from ``metavote.pruning``."""
    import subprocess
    import sys

    code = ("import sys, metavote.models.trace; assert not [m for m in sys.modules if m.startswith('metavote.pruning')]; "
            "from metavote.pruning.surgery import CUTTERS, register_cutter; from metavote.models import cutting; "
            "assert CUTTERS is cutting.CUTTERS and register_cutter is cutting.register_cutter")
    subprocess.run([sys.executable, "-c", code], check=True)
