"""From a user's image folder to a deployed model: prune --dataset, standalone files, ONNX, predict, bad input."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import synthetic_dataset
from metavote.cli import main
from metavote.data import load_dataset, to_float
from metavote.deploy import ExportError, OnnxModel, export_onnx, load_pruned, logit_agreement, predict
from metavote.experiments import context, prune
from metavote.zoo import Zoo, build_zoo

from conftest import tiny_ifp

BUDGET = ["--ratio", "0.5", "--iterations", "2", "--batch-size", "8", "--threads", "1", "--quiet"]
NEW_CLASSES = ("kite", "otter", "tram")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("METAVOTE_THREADS", "1")
    yield
    torch.set_num_threads(1)


def write_image_folder(root: Path, classes=NEW_CLASSES, per_class: int = 15, size=(40, 48)) -> Path:
    """``root/<class>/<i>.png``: the synthetic colour classes under new names, at a size the model does not take."""
    data = synthetic_dataset(num_classes=len(classes), train_per_class=per_class, test_per_class=1, seed=5)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i, image in enumerate(data.train_images[data.train_labels == k]):
            Image.fromarray(image).resize(size).save(root / name / f"{i}.png")
    return root


def run(capsys, argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(capsys, argv) -> str:
    rc, _, err = run(capsys, argv)
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_zoo_remembers_its_image_folder_and_every_command_uses_it(tmp_path, tiny_setup, capsys):
    dataset, _, weights = tiny_setup
    folder = write_image_folder(tmp_path / "photos")
    target = load_dataset(str(folder))
    build_zoo(tmp_path / "zoo", [target.task(["kite", "otter"]), target.task(["otter", "tram"])], weights, tiny_ifp(), str(folder),
              workers=1, progress=False)
    with Zoo(tmp_path / "zoo") as zoo:
        assert list(zoo.datasets) == ["photos"] and zoo.datasets["photos"]["path"] == str(folder.resolve())
    ctx = context(tmp_path / "zoo", backbone=weights)
    assert ctx.dataset.name == "photos" and ctx.dataset.classes == list(NEW_CLASSES)
    rc, out, err = run(capsys, ["similarity", "--zoo", tmp_path / "zoo", "--classes", "kite,tram", "--k", "2", "--threads", "1"])
    assert rc == 0 and "kite, otter" in out and "otter, tram" in out, err
    # a task of another dataset joins; the zoo's first dataset stays its default
    other = context(tmp_path / "zoo", backbone=weights, dataset=str(dataset.source))
    prune(other, dataset.classes[:2], "random", save=True, progress=False, ratio=0.5, iterations=1, batch_size=8)
    assert list(Zoo(tmp_path / "zoo").datasets) == ["photos", dataset.name]
    assert context(tmp_path / "zoo", backbone=weights).dataset.name == "photos"


def test_prune_an_image_folder_of_new_classes_then_export_and_predict(tmp_path, small_zoo, capsys):
    zoo, _, _, _ = small_zoo
    backbone = zoo.root.parent / "backbone.safetensors"
    folder = write_image_folder(tmp_path / "photos")
    out = tmp_path / "deploy" / "photos.safetensors"
    rc, stdout, err = run(capsys, ["prune", "--zoo", zoo.root, "--backbone", backbone, "--dataset", folder, "--out", out, "--method", "mvp",
                                   *BUDGET])
    assert rc == 0, err
    assert "kite, otter, tram" in stdout and "imprint" in stdout and out.exists()
    assert Zoo(zoo.root).records(method="mvp")[0].task.dataset == "photos"  # the record names its own dataset

    model = load_pruned(out)
    meta = model.pruned_meta
    assert meta["classes"] == list(NEW_CLASSES) and meta["method"] == "mvp" and len(meta["neighbours"]) == 3
    assert meta["backbone"] == zoo.fingerprint and meta["input_size"] == [3, 32, 32] and not model.training
    assert sum(p.numel() for p in model.parameters()) < 0.5 * sum(p.numel() for p in context(zoo.root, backbone=backbone).backbone.parameters())

    # the standalone file reloads to the in-memory model: run the Python API with the same seed and compare
    ctx = context(zoo.root, backbone=backbone, dataset=str(folder))
    result, task = prune(ctx, None, "mvp", save=False, progress=False, out=tmp_path / "api.safetensors", ratio=0.5, iterations=2, batch_size=8)
    data = ctx.dataset.load_task(task)
    x = to_float(torch.from_numpy(data.test_images))
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "api.safetensors")(x), result.model.eval()(x))

    # ONNX: checked against PyTorch on the task's test split, then by predict
    onnx_path = tmp_path / "deploy" / "photos.onnx"
    assert export_onnx(out, onnx_path, check_images=x).ok
    with torch.no_grad():
        assert logit_agreement(OnnxModel(onnx_path)(x), model(x)).ok
    # the command line checks on its own 16 images and says how closely, relative to the logits' scale
    rc, stdout, err = run(capsys, ["export", "--model", out, "--onnx", tmp_path / "cli.onnx"])
    assert rc == 0 and "of the logits' scale" in stdout and "same top-1 class on 16 of 16 images" in stdout, err
    images = sorted((folder / "tram").glob("*.png"))[:2]
    by_torch, by_onnx = predict(out, images, top_k=2), predict(onnx_path, images, top_k=2)
    assert [[c for c, _ in row] for row in by_torch] == [[c for c, _ in row] for row in by_onnx]
    assert all(len(row) == 2 and row[0][1] >= row[1][1] for row in by_onnx)
    rc, stdout, err = run(capsys, ["predict", "--model", onnx_path, *images])
    assert rc == 0 and stdout.count("%") == 6 and str(images[0]) in stdout, err

    # a zoo record as a standalone file
    record = Zoo(zoo.root).records(method="ifp")[0]
    rc, stdout, err = run(capsys, ["export", "--zoo", zoo.root, record.record_id, "--out", tmp_path / "record.safetensors"])
    assert rc == 0, err
    reference, _ = Zoo(zoo.root).load(record)
    with torch.no_grad():
        assert torch.equal(load_pruned(tmp_path / "record.safetensors")(x), reference(x))


def test_written_files_follow_the_umask(tmp_path, small_zoo):
    zoo, _, _, _ = small_zoo
    old = os.umask(0o022)
    try:
        record = zoo.records()[0]
        from metavote.deploy import export_record

        path = export_record(zoo, record.record_id, tmp_path / "m.safetensors")
        assert path.stat().st_mode & 0o777 == 0o644
        assert (zoo.root / "records" / record.file).stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


def test_bad_input_is_one_line_exit_2_and_nothing_is_written(tmp_path, small_zoo, capsys):
    zoo, _, _, _ = small_zoo
    backbone = zoo.root.parent / "backbone.safetensors"
    out = tmp_path / "out.safetensors"
    prune_args = ["prune", "--zoo", zoo.root, "--backbone", backbone, "--out", out, *BUDGET]

    assert "not found" in one_line_error(capsys, [*prune_args, "--dataset", tmp_path / "nowhere"])
    assert "does not exist" in one_line_error(capsys, ["pretrain", "--data", tmp_path / "nonexistent-dir", "--quiet", "--out", out])
    single = write_image_folder(tmp_path / "single", classes=("kite",))
    assert "at least 2 classes" in one_line_error(capsys, [*prune_args, "--dataset", single])
    empty = write_image_folder(tmp_path / "empty", classes=("kite", "otter"))
    (empty / "tram").mkdir()
    assert "tram" in one_line_error(capsys, [*prune_args, "--dataset", empty])
    corrupt = write_image_folder(tmp_path / "corrupt")
    (corrupt / "kite" / "0.png").write_bytes(b"not a png")
    assert str(corrupt / "kite" / "0.png") in one_line_error(capsys, [*prune_args, "--dataset", corrupt])
    photos = write_image_folder(tmp_path / "photos")
    assert "zebra" in one_line_error(capsys, [*prune_args, "--dataset", photos, "--classes", "kite,zebra"])
    assert not out.exists() and len(Zoo(zoo.root).records(method="mvp")) == 0

    image = next((photos / "kite").glob("*.png"))
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps({"weights": np.zeros(3)}))
    assert "not a pruned model" in one_line_error(capsys, ["predict", "--model", pickled, image])
    assert "not a metavote pruned model" in one_line_error(capsys, ["predict", "--model", backbone, image])
    assert "not a metavote pruned model" in one_line_error(capsys, ["export", "--model", backbone, "--onnx", tmp_path / "m.onnx"])
    assert not (tmp_path / "m.onnx").exists()
    run(capsys, ["export", "--zoo", zoo.root, zoo.records()[0].record_id, "--out", out])
    garbage = tmp_path / "photo.jpg"
    garbage.write_bytes(b"\xff\xd8 broken")
    assert str(garbage) in one_line_error(capsys, ["predict", "--model", out, garbage])
    assert "no such image" in one_line_error(capsys, ["predict", "--model", out, tmp_path / "missing.png"])
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "photos").rglob("*.tmp"))


def test_a_token_pruned_vit_exports_to_onnx(tmp_path):
    from metavote.methods import random_subnetwork
    from metavote.models import vision_transformer
    from metavote.pruning import extract
    from metavote.deploy import save_pruned

    torch.manual_seed(0)
    vit = vision_transformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=3)
    subnet = random_subnetwork(vit.unit_groups(), 0.5, 0)
    small = extract(vit, subnet).eval()
    small.set_tokens_kept([9, 5])
    save_pruned(tmp_path / "vit.safetensors", small, subnet, list(NEW_CLASSES), method="power")
    model = load_pruned(tmp_path / "vit.safetensors")
    assert model.tokens_kept == [9, 5]
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert export_onnx(tmp_path / "vit.safetensors", tmp_path / "vit.onnx", check_images=x).ok
    with torch.no_grad():
        assert logit_agreement(OnnxModel(tmp_path / "vit.onnx")(x), small(x)).ok


def test_the_export_check_is_relative_to_the_logits_scale():
    """The user's case: logits up to 187 and float32 rounding of 1.07e-4 pass (an absolute 1e-4 refused them);
    the same rounding on logits of 0.01 does not, nor does a changed top-1 class unless the image is a tie."""
    generator = torch.Generator().manual_seed(0)
    want = torch.randn(16, 5, generator=generator, dtype=torch.float64)
    want = want / want.abs().max() * 187.0
    noise = (torch.rand(16, 5, generator=generator, dtype=torch.float64) - 0.5) * 2 * 1.07e-4
    big = logit_agreement(want + noise, want)
    assert big.ok and big.scale == pytest.approx(187.0) and 1e-4 < big.max_abs < 1.07e-4 + 1e-12 and big.relative < 1e-6 and big.top1_same == 16
    assert not logit_agreement(want / 18700 + noise, want / 18700).ok  # the same difference on logits of 0.01: 1e-2 of their scale
    swapped = want.clone()
    swapped[3] = want[3].flip(0)  # one image's classes permuted: a wrong answer well within nothing
    wrong = logit_agreement(swapped, want)
    assert not wrong.ok and wrong.top1_same == 15 and wrong.ties == 0
    tie = want.clone()
    tie[5] = torch.tensor([50.0, 50.0 + 1e-3, -10.0, -10.0, -10.0])  # two classes within rounding: either is a right answer
    flipped = tie.clone()
    flipped[5, :2] = torch.tensor([50.0 + 1e-3, 50.0])
    assert (a := logit_agreement(flipped, tie)).ok and a.ties == 1 and a.top1_same == 15 and "1 of the others a tie" in str(a)


def test_a_wrong_graph_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    """A graph that computes something else (here: one convolution's weights moved by 1%) fails the check on any CPU."""
    import metavote.deploy

    model_path = tiny_pruned_file(tmp_path / "m.safetensors")
    real_export = metavote.deploy._export

    def broken_export(model, x, path, source):
        with torch.no_grad():
            model.conv1.weight.mul_(1.01)
        real_export(model, x, path, source)
        with torch.no_grad():
            model.conv1.weight.div_(1.01)

    monkeypatch.setattr(metavote.deploy, "_export", broken_export)
    with pytest.raises(ExportError, match=r"ONNX Runtime and PyTorch disagree on 16 images \(largest logit difference .* of the logits' scale"):
        export_onnx(model_path, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.glob("*.tmp*"))


def tiny_pruned_file(path: Path) -> Path:
    """A standalone pruned model without a zoo: a random sub-network of a tiny random ResNet, for NEW_CLASSES."""
    from metavote.deploy import save_pruned
    from metavote.methods import random_subnetwork
    from metavote.models import cifar_resnet18
    from metavote.pruning import extract

    torch.manual_seed(0)
    net = cifar_resnet18(width=0.125, num_classes=len(NEW_CLASSES))
    subnet = random_subnetwork(net.unit_groups(), 0.5, 0)
    return save_pruned(path, extract(net, subnet).eval(), subnet, list(NEW_CLASSES), method="random")


def test_an_output_that_cannot_be_written_is_refused_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    import metavote.deploy
    from metavote.errors import ConfigError

    model = tiny_pruned_file(tmp_path / "m.safetensors")
    folder, a_file = tmp_path / "existing", tmp_path / "notes.txt"
    folder.mkdir()
    a_file.write_text("a file, not a folder")
    loads = []
    real_load = metavote.deploy.load_pruned
    monkeypatch.setattr(metavote.deploy, "load_pruned", lambda *a, **k: loads.append(a) or real_load(*a, **k))

    assert f"--onnx {folder} is a directory" in one_line_error(capsys, ["export", "--model", model, "--onnx", folder])
    assert f"{a_file} is a file, not a folder" in one_line_error(capsys, ["export", "--model", model, "--onnx", a_file / "m.onnx"])
    assert f"--hf-folder {folder} exists" in one_line_error(capsys, ["export", "--model", model, "--hf-folder", folder])
    odd = tmp_path / "dir.safetensors"
    odd.mkdir()
    assert "is a directory" in one_line_error(capsys, ["export", "--zoo", tmp_path / "no-zoo", "rec", "--out", odd])
    with pytest.raises(ConfigError, match="is a directory"):
        export_onnx(model, folder)
    assert not loads and not list(folder.iterdir()) and not list(odd.iterdir()) and not list(tmp_path.rglob("*.tmp"))

    # a missing parent folder is made, as for `prune --out`
    rc, stdout, err = run(capsys, ["export", "--model", model, "--onnx", tmp_path / "new" / "m.onnx", "--threads", 1])
    assert rc == 0 and (tmp_path / "new" / "m.onnx").is_file(), err


def test_an_image_above_pils_decompression_bomb_limit_is_one_line(tmp_path, capsys, monkeypatch):
    model = tiny_pruned_file(tmp_path / "m.safetensors")
    photos = write_image_folder(tmp_path / "photos")  # 40x48 images
    huge = photos / "tram" / "huge.png"
    Image.new("RGB", (120, 100)).save(huge)
    # 120x100 is above twice the limit: PIL's DecompressionBombError, as a 20000x20000 photo meets at the default limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)
    cache = tmp_path / "cache"
    monkeypatch.setenv("METAVOTE_CACHE", str(cache))
    small = next((photos / "kite").glob("*.png"))
    for argv in (["predict", "--model", model, small, huge], ["data", "info", "--dataset", photos]):
        err = one_line_error(capsys, argv)
        assert f"image {huge} is 120x100 pixels, above PIL's decompression-bomb limit of 10,000 pixels" in err, err
    assert not cache.exists() or not list(cache.iterdir())
    assert Image.MAX_IMAGE_PIXELS == 5000  # reading the size in the header left the limit as it was
