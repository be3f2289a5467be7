"""OpenVINO as the runtime of an exported model: the same logits and predictions as ONNX Runtime and PyTorch, any batch size."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from metavote.deploy import OnnxModel, OpenVinoModel, export_onnx, load_pruned, open_model, predict  # noqa: E402
from metavote.errors import CheckpointError, ConfigError  # noqa: E402

from test_deploy import NEW_CLASSES, one_line_error, one_thread, run, tiny_pruned_file, write_image_folder  # noqa: E402,F401

TOLERANCE = 1e-4


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
            assert torch.allclose(got, ort_model(batch.contiguous()), atol=TOLERANCE)
            assert torch.allclose(got, torch_model(batch), atol=TOLERANCE)
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
            assert torch.allclose(ov_model(batch), small(batch), atol=TOLERANCE)


def test_predict_with_openvino_gives_onnx_runtimes_classes_and_the_cli_takes_runtime(tmp_path, exported, capsys):
    model_path, onnx_path = exported
    photos = write_image_folder(tmp_path / "photos")
    images = [next((photos / name).glob("*.png")) for name in NEW_CLASSES]
    by_ort, by_ov = predict(onnx_path, images, top_k=3), predict(onnx_path, images, top_k=3, runtime="openvino")
    assert [[c for c, _ in row] for row in by_ov] == [[c for c, _ in row] for row in by_ort]
    assert all(abs(p - q) < 1e-4 for a, b in zip(by_ov, by_ort) for (_, p), (_, q) in zip(a, b))
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
