"""int8 ONNX export: static quantisation calibrated on the task's training images, scored against fp32 on its test split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from metavote.data import to_float  # noqa: E402
from metavote.deploy import (  # noqa: E402
    OnnxModel, export_int8, export_onnx, export_record, load_pruned, onnx_accuracy, predict, quantize_onnx, read_pruned, save_pruned,
)
from metavote.errors import ConfigError  # noqa: E402
from metavote.pruning import SubNetwork  # noqa: E402

from test_deploy import one_line_error, one_thread, run  # noqa: E402,F401  (one_thread: an autouse fixture)

QUANTIZED = {onnx.TensorProto.UINT8, onnx.TensorProto.INT8}


@pytest.fixture()
def trained(small_zoo, tmp_path):
    """A zoo record as a standalone file, fitted to its task's training images for a few steps (the
    tiny zoo's models are near chance, with near ties between classes that any rounding flips), and
    the task's data: (model file, data folder, TaskData)."""
    zoo, dataset, folder, _ = small_zoo
    record = zoo.records()[0]
    path = export_record(zoo, record.record_id, tmp_path / "record.safetensors")
    tensors, meta = read_pruned(path)
    model = load_pruned(path).train()
    data = dataset.load_task(record.task)
    x, y = to_float(torch.from_numpy(data.train_images)), torch.from_numpy(data.train_labels)
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(30):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    info = {k: v for k, v in meta.items() if k not in ("format", "config", "classes", "input_size", "mean", "std")}
    out = save_pruned(tmp_path / "fitted.safetensors", model.eval(), SubNetwork.from_tensors(tensors), meta["classes"], **info)
    return out, folder, data


def no_task_model(path: Path, task: dict | None = None) -> Path:
    """A tiny random pruned ResNet for three classes, with ``task`` in its metadata (or none)."""
    from metavote.methods import random_subnetwork
    from metavote.models import cifar_resnet18
    from metavote.pruning import extract

    torch.manual_seed(0)
    net = cifar_resnet18(width=0.125, num_classes=3)
    subnet = random_subnetwork(net.unit_groups(), 0.5, 0)
    return save_pruned(path, extract(net, subnet).eval(), subnet, ["kite", "otter", "tram"], method="random",
                       **({"task": task} if task else {}))




def test_the_int8_export_holds_int8_is_smaller_opens_and_agrees_with_fp32(tmp_path, trained):
    model_path, folder, data = trained
    int8 = tmp_path / "out" / "m.onnx"
    report = export_int8(model_path, int8, data=folder, calibration_images=16)
    assert report.path == int8 and int8.is_file() and report.calibration_images == 16 and report.test_images == len(data.test_labels) == 12
    # a tiny model's near ties flip under rounding: 97% of a real task's test images keep their class (docs/benchmarks/deployment.md)
    assert report.agreement >= 10 / 12 and abs(report.accuracy - report.fp32_accuracy) <= 2 / 12 + 1e-9
    assert not list(tmp_path.rglob("*.tmp"))

    # the fp32 accuracy is the fp32 export's, the int8 one is the file's
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model_path, fp32)
    assert onnx_accuracy(fp32, data.test_images, data.test_labels) == pytest.approx(report.fp32_accuracy)
    assert onnx_accuracy(int8, data.test_images, data.test_labels) == pytest.approx(report.accuracy)
    assert int8.stat().st_size < 0.7 * fp32.stat().st_size

    # int8 weights and quantise/dequantise nodes; the metadata kept, with the precision
    proto = onnx.load(str(int8))
    ops = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert sum(t.data_type in QUANTIZED for t in proto.graph.initializer) >= 20  # every conv's weights at least
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["precision"] == "int8" and props["source"] == model_path.name

    # OnnxModel and predict open it as they open an fp32 export
    onnx_model = OnnxModel(int8)
    assert onnx_model.classes == load_pruned(model_path).pruned_meta["classes"] and tuple(onnx_model.input_size) == (3, 32, 32)
    x = to_float(torch.from_numpy(data.test_images))
    assert (onnx_model(x).argmax(1) == OnnxModel(fp32)(x).argmax(1)).float().mean() == pytest.approx(report.agreement)
    files = []
    for i, image in enumerate(data.test_images[:3]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(files[-1])
    by_int8 = predict(int8, files, top_k=1)  # the PNG files hold the test images as they are
    assert [row[0][0] for row in by_int8] == [onnx_model.classes[i] for i in onnx_model(x[:3]).argmax(1)]


def test_quantize_onnx_takes_float_images_and_other_schemes(tmp_path, trained):
    model_path, _, data = trained
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(model_path, fp32)
    calibration = to_float(torch.from_numpy(data.train_images[:8])).numpy()
    out = quantize_onnx(fp32, tmp_path / "u8.onnx", calibration, activations="uint8", weights="uint8", per_channel=False, batch_size=3)
    proto = onnx.load(str(out))
    assert any(t.data_type == onnx.TensorProto.UINT8 for t in proto.graph.initializer)
    assert onnx_accuracy(out, data.test_images, data.test_labels) >= 0
    with pytest.raises(ConfigError, match="activations must be one of"):
        quantize_onnx(fp32, tmp_path / "bad.onnx", calibration, activations="int4")
    with pytest.raises(ConfigError, match="at least one image"):
        quantize_onnx(fp32, tmp_path / "bad.onnx", calibration[:0])
    assert not (tmp_path / "bad.onnx").exists()


def test_a_model_whose_training_images_cannot_be_found_is_one_line(tmp_path, tiny_setup):
    _, folder, _ = tiny_setup
    out = tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match="does not say which task it was pruned for") as e:
        export_int8(no_task_model(tmp_path / "none.safetensors"), out)
    assert "\n" not in str(e.value)
    elsewhere = no_task_model(tmp_path / "elsewhere.safetensors", {"dataset": "nowhere", "classes": ["kite", "otter", "tram"]})
    (tmp_path / "empty-root").mkdir()
    for data in (None, tmp_path / "empty-root"):
        with pytest.raises(ConfigError, match=r"dataset 'nowhere' not found.*--data") as e:
            export_int8(elsewhere, out, data=data)
        assert "\n" not in str(e.value) and "int8 calibration needs the images" in str(e.value)
    # the dataset is found, but not the task's classes
    strange = no_task_model(tmp_path / "strange.safetensors", {"dataset": "cifar100", "classes": ["kite", "otter", "tram"]})
    with pytest.raises(ConfigError, match="unknown class name"):
        export_int8(strange, out, data=folder)
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


def test_the_cli_writes_the_int8_model_and_prints_both_accuracies(tmp_path, trained, capsys):
    model_path, folder, _ = trained
    out = tmp_path / "m.onnx"
    rc, stdout, err = run(capsys, ["export", "--model", model_path, "--onnx", out, "--int8", "--data", folder, "--calibration", 16,
                                   "--threads", 1])
    assert rc == 0 and out.is_file(), err
    assert len(stdout.splitlines()) == 1 and "calibrated on 16 training images" in stdout
    assert "int8 top-1" in stdout and "vs fp32" in stdout and "on the task's 12 test images" in stdout
    assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}["precision"] == "int8"

    again = tmp_path / "again.onnx"
    assert "--precision int8 goes with" in one_line_error(capsys, ["export", "--model", model_path, "--hf-folder", tmp_path / "hf", "--int8"])
    assert "--precision int8 goes with" in one_line_error(capsys, ["export", "--zoo", tmp_path / "zoo", "r", "--out", again, "--int8"])
    assert "--calibration goes with --precision int8" in one_line_error(capsys, ["export", "--model", model_path, "--onnx", again,
                                                                                 "--calibration", 16])
    assert "--data goes with --precision int8 or bf16" in one_line_error(capsys, ["export", "--model", model_path, "--onnx", again,
                                                                                  "--data", tmp_path])
    assert "calibration_images must be >= 1" in one_line_error(capsys, ["export", "--model", model_path, "--onnx", again, "--int8",
                                                                        "--calibration", 0])
    no_task = no_task_model(tmp_path / "none.safetensors")
    assert "does not say which task" in one_line_error(capsys, ["export", "--model", no_task, "--onnx", again, "--int8"])
    assert not again.exists() and not (tmp_path / "hf").exists()


def test_quantising_a_token_pruned_vit_leaves_the_working_directory_clean(tmp_path, monkeypatch):
    """ONNX Runtime's shape inference fails on this graph and writes its partial model to the working directory;
    the pre-processing runs in a temporary folder, and the quantisation goes on without it."""
    from metavote.methods import random_subnetwork
    from metavote.models import vision_transformer
    from metavote.pruning import extract

    torch.manual_seed(0)
    vit = vision_transformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=3)
    subnet = random_subnetwork(vit.unit_groups(), 0.5, 0)
    small = extract(vit, subnet).eval()
    small.set_tokens_kept([9, 5])
    save_pruned(tmp_path / "vit.safetensors", small, subnet, ["kite", "otter", "tram"], method="power")
    export_onnx(tmp_path / "vit.safetensors", tmp_path / "vit.onnx")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    calibration = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)).numpy()
    out = quantize_onnx(tmp_path / "vit.onnx", tmp_path / "vit.int8.onnx", calibration)
    assert OnnxModel(out)(torch.from_numpy(calibration[:2])).shape == (2, 3)
    assert not list(work.iterdir())
