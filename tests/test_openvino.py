"""OpenVINO as the runtime of an exported model: the same logits and predictions as ONNX Runtime and PyTorch, any batch size."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from metavote.deploy import (  # noqa: E402
    OnnxModel, OpenVinoModel, export_bf16, export_onnx, load_pruned, logit_agreement, open_model, openvino_bf16, predict,
)
from metavote.errors import CheckpointError, ConfigError  # noqa: E402

from test_deploy import NEW_CLASSES, one_line_error, one_thread, run, tiny_pruned_file, write_image_folder  # noqa: E402,F401
from test_int8 import trained  # noqa: E402,F401,F811  (a fixture: a fitted zoo record and its task's data)

# Every comparison is relative to the logits' scale (metavote.deploy.ONNX_TOLERANCE, 1e-3): OpenVINO, ONNX Runtime
# and PyTorch sum in different orders with different kernels on AVX2, AVX-512 and AMX, so no absolute bound holds
# on every CPU, while a model run in bf16 moves its logits by ~1e-2 of their scale, which this check catches.


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """``(model.safetensors, model.onnx)``: a tiny pruned ResNet and its checked ONNX export."""
    folder = tmp_path_factory.mktemp("openvino")
    model = tiny_pruned_file(folder / "m.safetensors")
    export_onnx(model, folder / "m.onnx")
    return model, folder / "m.onnx"


def test_openvino_logits_agree_with_onnx_runtime_and_pytorch_at_any_batch_size(exported):
    model_path, onnx_path = exported
    ov_model, ort_model, torch_model = OpenVinoModel(onnx_path, threads=1), OnnxModel(onnx_path), load_pruned(model_path)
    assert ov_model.classes == list(NEW_CLASSES) and ov_model.input_size == (3, 32, 32) and ov_model.threads == 1
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for batch in (x[:1], x, x[2:3], x[::2]):  # one request, reused, across batch sizes; a strided batch too
            got = ov_model(batch)
            assert got.shape == (len(batch), len(NEW_CLASSES)) and got.dtype == torch.float32
            assert logit_agreement(got, ort_model(batch.contiguous())).ok
            assert logit_agreement(got, torch_model(batch)).ok
    first = ov_model(x[:1])
    ov_model(x)
    assert torch.equal(first, ov_model(x[:1]))  # a result is a copy: the next call does not overwrite it


def test_a_token_pruned_vit_runs_in_openvino(tmp_path):
    from metavote.deploy import save_pruned
    from metavote.methods import random_subnetwork
    from metavote.models import vision_transformer
    from metavote.pruning import extract

    torch.manual_seed(0)
    vit = vision_transformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=3)
    subnet = random_subnetwork(vit.unit_groups(), 0.5, 0)
    small = extract(vit, subnet).eval()
    small.set_tokens_kept([9, 5])  # attention-guided token dropping: top-k and gather in the graph
    save_pruned(tmp_path / "vit.safetensors", small, subnet, list(NEW_CLASSES), method="power")
    export_onnx(tmp_path / "vit.safetensors", tmp_path / "vit.onnx")
    ov_model = OpenVinoModel(tmp_path / "vit.onnx", threads=1)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for batch in (x[:1], x):
            assert logit_agreement(ov_model(batch), small(batch)).ok


def test_predict_with_openvino_gives_onnx_runtimes_classes_and_the_cli_takes_runtime(tmp_path, exported, capsys):
    model_path, onnx_path = exported
    photos = write_image_folder(tmp_path / "photos")
    images = [next((photos / name).glob("*.png")) for name in NEW_CLASSES]
    by_ort, by_ov = predict(onnx_path, images, top_k=3), predict(onnx_path, images, top_k=3, runtime="openvino")
    assert [[c for c, _ in row] for row in by_ov] == [[c for c, _ in row] for row in by_ort]
    assert all(abs(p - q) < 1e-3 for a, b in zip(by_ov, by_ort) for (_, p), (_, q) in zip(a, b))  # probabilities: their scale is 1
    model, classes, size = open_model(onnx_path, None, runtime="openvino")
    assert isinstance(model, OpenVinoModel) and classes == list(NEW_CLASSES) and size == (3, 32, 32)

    rc, stdout, err = run(capsys, ["predict", "--model", onnx_path, "--runtime", "openvino", "--threads", 1, *images])
    assert rc == 0 and stdout.count("%") == 9 and str(images[0]) in stdout, err
    assert "export it first" in one_line_error(capsys, ["predict", "--model", model_path, "--runtime", "openvino", images[0]])
    assert "not on cuda" in one_line_error(capsys, ["predict", "--model", onnx_path, "--runtime", "openvino", "--device", "cuda", images[0]])
    with pytest.raises(ConfigError, match="unknown runtime"):
        open_model(onnx_path, runtime="tensorrt")


def test_openvino_refuses_an_onnx_file_metavote_did_not_write(tmp_path, exported):
    import onnx

    _, onnx_path = exported
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(CheckpointError, match="not one exported by metavote"):
        OpenVinoModel(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        OpenVinoModel(tmp_path / "junk.onnx")
    with pytest.raises(CheckpointError, match="does not exist"):
        OpenVinoModel(tmp_path / "missing.onnx")


def test_without_openvino_installed_the_error_is_one_line_naming_the_extra(monkeypatch, exported, tmp_path, capsys):
    _, onnx_path = exported
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    with pytest.raises(ConfigError) as info:
        OpenVinoModel(onnx_path)
    assert "pip install 'metavote[openvino]'" in str(info.value) and "\n" not in str(info.value)
    image = next((write_image_folder(tmp_path / "photos") / "kite").glob("*.png"))
    assert "metavote[openvino]" in one_line_error(capsys, ["predict", "--model", onnx_path, "--runtime", "openvino", image])
    assert predict(onnx_path, [image], top_k=1)[0][0][0] in NEW_CLASSES  # ONNX Runtime, the default, does not need it


def test_an_fp32_model_runs_in_f32_on_every_cpu_and_bf16_only_when_asked(exported, capsys):
    """OpenVINO's own default on a CPU with native bf16 is bf16: metavote sets f32 unless told, and bf16 is
    one line where the CPU has none (or its bf16 kernels are capped away, as ONEDNN_MAX_CPU_ISA=AVX2 does)."""
    model_path, onnx_path = exported
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    fp32 = OpenVinoModel(onnx_path, threads=1)
    assert fp32.precision == "fp32" and str(fp32.compiled.get_property("INFERENCE_PRECISION_HINT")) in ("<Type: 'float32'>", "f32")
    with torch.no_grad():
        reference = load_pruned(model_path)(x)
    assert logit_agreement(fp32(x), reference).relative < 1e-4
    with pytest.raises(ConfigError, match="ONNX Runtime runs .* in fp32 on the CPU, not bf16"):
        OnnxModel(onnx_path, "bf16")
    with pytest.raises(ConfigError, match="holds fp32 weights; an int8 model is quantised"):
        OpenVinoModel(onnx_path, precision="int8")
    images = [next((write_image_folder(Path(onnx_path).parent / "photos") / "kite").glob("*.png"))]
    try:
        bf16 = OpenVinoModel(onnx_path, threads=1, precision="bf16")
    except ConfigError as e:  # a CPU without native bf16 (AVX2), or its bf16 kernels capped away (ONEDNN_MAX_CPU_ISA=AVX2)
        assert "\n" not in str(e) and "no native bf16" in str(e)
        assert "bf16" in one_line_error(capsys, ["predict", "--model", onnx_path, "--runtime", "openvino", "--precision", "bf16", *images])
        return
    assert openvino_bf16() and bf16.precision == "bf16"
    drift = logit_agreement(bf16(x), reference, tolerance=0.05)
    assert drift.ok and drift.relative > 1e-5  # bf16 keeps 8 bits of mantissa: near, and measurably not f32
    rc, out, err = run(capsys, ["predict", "--model", onnx_path, "--runtime", "openvino", "--precision", "bf16", *images])
    assert rc == 0 and "%" in out, err


def test_a_bf16_export_is_marked_scored_against_fp32_and_runs_in_bf16_by_default(tmp_path, trained, capsys):  # noqa: F811
    model_path, folder, data = trained
    out = tmp_path / "bf16.onnx"
    if not openvino_bf16():
        assert "needs AVX512_BF16 or AMX" in one_line_error(capsys, ["export", "--model", model_path, "--onnx", out, "--precision", "bf16",
                                                                     "--data", folder])
        assert not out.exists()
        return
    report = export_bf16(model_path, out, data=folder, threads=1)
    assert report.precision == "bf16" and report.test_images == len(data.test_labels) and report.agreement >= 10 / 12
    assert OpenVinoModel(out).precision == "bf16" and OnnxModel(out).precision == "fp32"  # ONNX Runtime runs the fp32 weights
    assert OpenVinoModel(out, precision="fp32").precision == "fp32"
    rc, stdout, err = run(capsys, ["export", "--model", model_path, "--onnx", tmp_path / "cli.onnx", "--precision", "bf16", "--data", folder])
    assert rc == 0 and "bf16 top-1" in stdout and "vs fp32" in stdout, err
    assert "--precision int8 goes with" not in stdout
    assert "--int8 is --precision int8, not bf16" in one_line_error(capsys, ["export", "--model", model_path, "--onnx", tmp_path / "x.onnx",
                                                                            "--int8", "--precision", "bf16"])
