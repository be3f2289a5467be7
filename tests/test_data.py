"""Datasets (both CIFAR layouts, download, image folders), tasks, augmentation and batches."""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import metavote.data as mvdata
from helpers import py2_pickle_bytes, synthetic_dataset, write_cifar_pickles
from metavote.data import (
    Augment,
    BatchLoader,
    ImageDataset,
    Task,
    augment_batch,
    download_cifar100,
    load_cifar100,
    load_dataset,
    load_image_folder,
    sample_tasks,
    to_float,
    write_npz_dataset,
)
from metavote.errors import ConfigError, DataError, DataNotFoundError, TaskError


def assert_same_dataset(a: ImageDataset, b: ImageDataset) -> None:
    assert a.classes == b.classes
    for split in ("train", "test"):
        xa, xb = getattr(a, f"{split}_images"), getattr(b, f"{split}_images")
        assert xb.dtype == np.uint8 and xb.shape == xa.shape
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(getattr(a, f"{split}_labels"), getattr(b, f"{split}_labels"))
        assert getattr(b, f"{split}_labels").dtype == np.int64


# ----------------------------------------------------------------------------- CIFAR layouts


def test_npz_layout_round_trip(tmp_path):
    ds = synthetic_dataset()
    root = write_npz_dataset(ds, tmp_path / "c")
    assert sorted(p.name for p in root.iterdir()) == ["classes.json", "test.npz", "train.npz"]
    loaded = load_cifar100(root)
    assert loaded.name == "cifar100"
    assert_same_dataset(ds, loaded)


def test_official_pickle_layout_loads_same_pixels_and_labels(tmp_path):
    ds = synthetic_dataset(num_classes=5, train_per_class=3, test_per_class=2)
    folder = write_cifar_pickles(tmp_path / "cifar-100-python", ds)
    loaded = load_cifar100(folder)
    assert_same_dataset(ds, loaded)
    # HWC order: the flattened row is R plane, then G, then B; pixel (row 0, col 1) of image 0
    raw = pickle.loads((folder / "train").read_bytes(), encoding="bytes")[b"data"]
    for ch in range(3):
        assert loaded.train_images[0, 0, 1, ch] == raw[0, ch * 1024 + 1]
        assert loaded.train_images[0, 2, 0, ch] == raw[0, ch * 1024 + 2 * 32]
    # npz and pickle layouts of the same data agree
    assert_same_dataset(load_cifar100(write_npz_dataset(ds, tmp_path / "npz")), loaded)


CALLS: list = []


def _record_call(*args):
    CALLS.append(args)
    return "ran"


class _CallsGetcwd:
    def __reduce__(self):
        return (os.getcwd, ())


class _CallsRecorder:
    def __reduce__(self):
        return (_record_call, ("pwned",))


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("payload", [_CallsGetcwd, _CallsRecorder])
def test_restricted_unpickler_refuses_other_globals(tmp_path, protocol, payload):
    ds = synthetic_dataset(num_classes=3, train_per_class=1, test_per_class=1)
    folder = write_cifar_pickles(tmp_path / "c", ds)
    blob = pickle.dumps({b"fine_label_names": [b"a", b"b", b"c"], b"x": payload()}, protocol=protocol)
    assert pickle.loads(blob, encoding="bytes")[b"x"] is not None  # a plain unpickler would run it
    CALLS.clear()
    (folder / "meta").write_bytes(blob)
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar100(folder)
    assert CALLS == []


def test_restricted_unpickler_refuses_hand_made_global_opcode(tmp_path):
    ds = synthetic_dataset(num_classes=3, train_per_class=1, test_per_class=1)
    folder = write_cifar_pickles(tmp_path / "c", ds)
    # GLOBAL 'os system', a string argument, TUPLE1, REDUCE: what an attacker would write
    evil = b"\x80\x02cos\nsystem\nU\x04trueq\x00\x85R."
    (folder / "train").write_bytes(evil)
    with pytest.raises(DataError, match="os.system"):
        load_cifar100(folder)


def test_pickle_layout_wrong_shape_or_type(tmp_path):
    ds = synthetic_dataset(num_classes=3, train_per_class=1, test_per_class=1)
    folder = write_cifar_pickles(tmp_path / "c", ds)
    (folder / "test").write_bytes(py2_pickle_bytes({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(DataError, match="3072"):
        load_cifar100(folder)
    (folder / "test").write_bytes(py2_pickle_bytes([1, 2, 3]))
    with pytest.raises(DataError, match="dict"):
        load_cifar100(folder)


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_npz_raises_data_error(tmp_path, keep):
    root = write_npz_dataset(synthetic_dataset(), tmp_path / "c")
    blob = (root / "train.npz").read_bytes()
    (root / "train.npz").write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(DataError, match="train.npz"):
        load_cifar100(root)


def test_missing_array_in_npz_raises_data_error(tmp_path):
    root = write_npz_dataset(synthetic_dataset(), tmp_path / "c")
    np.savez(root / "test.npz", images=np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="fine_labels"):
        load_cifar100(root)


# ----------------------------------------------------------------------------- download


def _cifar_archive(tmp_path, ds):
    src = write_cifar_pickles(tmp_path / "src" / "cifar-100-python", ds)
    archive = tmp_path / "archive.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="cifar-100-python")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_download_file_url_with_md5_and_load(tmp_path):
    ds = synthetic_dataset(num_classes=4, train_per_class=2, test_per_class=1)
    archive, md5 = _cifar_archive(tmp_path, ds)
    root = tmp_path / "data"
    folder = download_cifar100(root, url=archive.as_uri(), md5=md5)
    assert folder == root / "cifar-100-python"
    assert (root / "cifar-100-python.tar.gz").read_bytes() == archive.read_bytes()
    assert_same_dataset(ds, load_cifar100(folder))
    # found by name under the data root, too
    assert_same_dataset(ds, load_dataset("cifar100", data=root))
    # a verified archive is reused: the URL is not fetched again
    assert download_cifar100(root, url=(tmp_path / "gone.tar.gz").as_uri(), md5=md5) == folder


def test_download_wrong_md5_leaves_no_file(tmp_path):
    archive, md5 = _cifar_archive(tmp_path, synthetic_dataset(num_classes=3, train_per_class=1, test_per_class=1))
    root = tmp_path / "data"
    with pytest.raises(DataError, match="checksum"):
        download_cifar100(root, url=archive.as_uri(), md5="0" * 32)
    assert not root.exists() or list(root.iterdir()) == []


def test_download_missing_url_raises_not_found(tmp_path):
    with pytest.raises(DataNotFoundError, match="could not download"):
        download_cifar100(tmp_path / "d", url=(tmp_path / "nope.tar.gz").as_uri(), md5=None)
    assert list((tmp_path / "d").iterdir()) == []


# ----------------------------------------------------------------------------- locating data


def _isolate_search_path(monkeypatch, tmp_path):
    """No $METAVOTE_DATA, a cwd without ../shared, and the repo fallback pointed into tmp_path."""
    work = tmp_path / "cwd" / "repo"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.delenv("METAVOTE_DATA", raising=False)
    monkeypatch.setattr(mvdata, "__file__", str(tmp_path / "fake" / "src" / "metavote" / "data.py"))


def test_load_dataset_not_found_lists_places(tmp_path, monkeypatch):
    _isolate_search_path(monkeypatch, tmp_path)
    env = tmp_path / "envdata"
    env.mkdir()
    monkeypatch.setenv("METAVOTE_DATA", str(env))
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar100")
    msg = str(info.value)
    for place in (env, tmp_path / "cwd" / "shared" / "data"):
        assert str(place) in msg
    assert msg.index(str(env)) < msg.index(str(tmp_path / "cwd"))
    assert "METAVOTE_DATA" in msg


def test_an_explicit_data_root_wins_or_fails(tmp_path, monkeypatch):
    """--data is never silently replaced by $METAVOTE_DATA or ../shared/data."""
    _isolate_search_path(monkeypatch, tmp_path)
    ds = synthetic_dataset(num_classes=3, train_per_class=2, test_per_class=1)
    write_npz_dataset(ds, tmp_path / "envdata" / "cifar100")
    monkeypatch.setenv("METAVOTE_DATA", str(tmp_path / "envdata"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("cifar100", data=empty)
    assert str(empty) in str(info.value) and "envdata" not in str(info.value)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset("cifar100", data=tmp_path / "nonexistent-dir")


def test_metavote_data_env_is_used(tmp_path, monkeypatch):
    _isolate_search_path(monkeypatch, tmp_path)
    ds = synthetic_dataset(num_classes=3, train_per_class=2, test_per_class=1)
    env = tmp_path / "envdata"
    write_npz_dataset(ds, env / "cifar100")
    monkeypatch.setenv("METAVOTE_DATA", str(env))
    assert_same_dataset(ds, load_dataset("cifar100"))


def test_explicit_data_wins_over_env(tmp_path, monkeypatch):
    _isolate_search_path(monkeypatch, tmp_path)
    a = synthetic_dataset(num_classes=3, train_per_class=2, test_per_class=1, seed=1)
    b = synthetic_dataset(num_classes=4, train_per_class=2, test_per_class=1, seed=2)
    write_npz_dataset(a, tmp_path / "a" / "cifar100")
    write_npz_dataset(b, tmp_path / "b" / "cifar100")
    monkeypatch.setenv("METAVOTE_DATA", str(tmp_path / "b"))
    assert load_dataset("cifar100", data=tmp_path / "a").classes == a.classes
    assert load_dataset("cifar100").classes == b.classes


# ----------------------------------------------------------------------------- image folders


_SIZES = [(40, 20), (64, 64), (17, 33), (32, 32), (50, 41)]


def _write_images(folder, n, colour, seed):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = _SIZES[(i + seed) % len(_SIZES)]
        arr = np.clip(np.array(colour) + rng.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")


FOLDER_CLASSES = {"n01440764": (250, 10, 10), "n02102040": (10, 250, 10), "zebra": (10, 10, 250)}


def _image_folder(root, per_class=(5, 10, 4)):
    for seed, ((name, colour), n) in enumerate(zip(FOLDER_CLASSES.items(), per_class)):
        _write_images(root / name, n, colour, seed)
    return root


def test_image_folder_decodes_splits_and_wnids(tmp_path):
    root = _image_folder(tmp_path / "pics")
    ds = load_image_folder(root, size=32, test_fraction=0.3, cache_dir=tmp_path / "cache")
    assert ds.name == "pics"
    assert ds.classes == ["n01440764", "n02102040", "zebra"]
    assert ds.wnids == ["n01440764", "n02102040", None]
    for x in (ds.train_images, ds.test_images):
        assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3)
    # per class: round(n * 0.3) (at least 1) held out
    expected_test = {0: 2, 1: 3, 2: 1}
    for c, n in enumerate((5, 10, 4)):
        assert int((ds.test_labels == c).sum()) == expected_test[c]
        assert int((ds.train_labels == c).sum()) == n - expected_test[c]
    # the pixels belong to the right class (dominant channel = the class colour)
    for x, y in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
        dominant = x.reshape(len(x), -1, 3).mean(1).argmax(1)
        np.testing.assert_array_equal(dominant, y)
    # deterministic split: another load (new cache) gives the same arrays
    again = load_image_folder(root, size=32, test_fraction=0.3, cache_dir=tmp_path / "cache2")
    np.testing.assert_array_equal(again.test_images, ds.test_images)


def test_image_folder_cache_is_reused(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "pics")
    cache = tmp_path / "cache"
    calls = []
    real = mvdata.decode_images

    def counting(files, size):
        calls.append(len(files))
        return real(files, size)

    monkeypatch.setattr(mvdata, "decode_images", counting)
    first = load_image_folder(root, cache_dir=cache)
    assert sum(calls) == 19 and len(list(cache.glob("*.npz"))) == 1

    def boom(files, size):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(mvdata, "decode_images", boom)
    second = load_image_folder(root, cache_dir=cache)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    np.testing.assert_array_equal(first.test_labels, second.test_labels)
    # a changed file list invalidates the cache
    _write_images(root / "zebra", 5, (10, 10, 250), 2)
    with pytest.raises(AssertionError, match="cache"):
        load_image_folder(root, cache_dir=cache)


def test_image_folder_train_val_layout(tmp_path):
    root = tmp_path / "tv"
    for seed, (name, colour) in enumerate(FOLDER_CLASSES.items()):
        _write_images(root / "train" / name, 3 + seed, colour, seed)
        _write_images(root / "val" / name, 2, colour, seed + 10)
    ds = load_image_folder(root, cache_dir=tmp_path / "cache")
    assert ds.classes == sorted(FOLDER_CLASSES)
    assert np.bincount(ds.train_labels).tolist() == [3, 4, 5]
    assert np.bincount(ds.test_labels).tolist() == [2, 2, 2]
    # found by name under a data root, as a dataset
    ds2 = load_dataset("tv", data=tmp_path, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(ds2.train_labels, ds.train_labels)


def test_image_folder_train_val_class_mismatch(tmp_path):
    root = tmp_path / "tv"
    for split, classes in (("train", "ab"), ("val", "ac")):
        for c in classes:
            _write_images(root / split / c, 2, (0, 0, 0), 0)
    with pytest.raises(DataError, match="different classes"):
        load_image_folder(root, cache_dir=tmp_path / "cache")


def test_image_folder_bad_fraction_and_missing(tmp_path):
    with pytest.raises(ConfigError):
        load_image_folder(tmp_path, test_fraction=1.0)
    with pytest.raises(DataNotFoundError):
        load_image_folder(tmp_path / "nope")


def test_image_folder_with_an_image_above_the_decompression_bomb_limit(tmp_path, monkeypatch):
    """A huge image (a 20000x20000 photo at PIL's default limit; 100x90 under a lowered one) is one
    DataError naming the file and its size, never PIL's traceback; no cache is written."""
    import warnings

    root = _image_folder(tmp_path / "pics")  # at most 64x64 = 4096 pixels
    huge = root / "zebra" / "huge.png"
    Image.new("RGB", (100, 90)).save(huge)
    cache = tmp_path / "cache"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4096)  # 9000 pixels: above twice the limit, PIL raises
    with pytest.raises(DataError) as e:
        load_image_folder(root, cache_dir=cache)
    assert str(e.value) == (f"image {huge} is 100x90 pixels, above PIL's decompression-bomb limit of 8,192 pixels; "
                            "resize it or remove it (or, for a trusted file, raise PIL.Image.MAX_IMAGE_PIXELS)")
    assert Image.MAX_IMAGE_PIXELS == 4096 and not cache.exists()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # between the limit and twice it PIL warns: under -W error, the same line
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(DataError, match=r"huge\.png is 100x90 pixels, above PIL's decompression-bomb limit of 5,000 pixels"):
            load_image_folder(root, cache_dir=cache)
    assert not cache.exists()


# ----------------------------------------------------------------------------- tasks


def test_task_classes_sorted_and_id():
    t = Task("ds", ("c", "a", "b"))
    assert t.classes == ("a", "b", "c") and t.n_way == 3
    assert t.id == Task("ds", ("b", "c", "a")).id
    assert t.id != Task("other", ("a", "b", "c")).id
    assert t.id != Task("ds", ("a", "b", "d")).id
    assert len(t.id) == 12 and int(t.id, 16) >= 0
    assert Task.from_dict(t.to_dict()) == t
    assert 0 <= t.seed < 2**31 - 1


def test_task_invalid():
    with pytest.raises(TaskError, match="duplicate"):
        Task("ds", ("a", "b", "a"))
    with pytest.raises(TaskError, match="at least 2"):
        Task("ds", ("a",))


def test_unknown_class_has_did_you_mean_hint():
    ds = synthetic_dataset()
    with pytest.raises(TaskError) as info:
        ds.task(["class_a", "clas_b"])
    assert "did you mean 'class_b'" in str(info.value)
    assert "clas_b" in str(info.value)


def test_load_task_remaps_to_sorted_class_order():
    ds = synthetic_dataset()
    task = ds.task(["class_e", "class_b", "class_c"])
    assert task.classes == ("class_b", "class_c", "class_e")
    data = ds.load_task(task)
    assert data.dataset_class_indices == [1, 2, 4]
    for split in ("train", "test"):
        x_all, y_all = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        x, y = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        keep = np.isin(y_all, [1, 2, 4])
        np.testing.assert_array_equal(x, x_all[keep])
        np.testing.assert_array_equal(y, np.searchsorted([1, 2, 4], y_all[keep]))
        assert sorted(set(y.tolist())) == [0, 1, 2]
    with pytest.raises(TaskError, match="not of"):
        ds.load_task(Task("elsewhere", ("class_a", "class_b")))


def test_sample_tasks():
    ds = synthetic_dataset()
    a = sample_tasks(ds, 3, 8, seed=5)
    assert a == sample_tasks(ds, 3, 8, seed=5)
    assert a != sample_tasks(ds, 3, 8, seed=6)
    assert len({t.id for t in a}) == 8
    assert all(t.n_way == 3 and t.dataset == "synthetic" and set(t.classes) <= set(ds.classes) for t in a)
    # every one of the C(6, 3) = 20 tasks can be drawn, and no more
    assert len({t.id for t in sample_tasks(ds, 3, 20, seed=0)}) == 20
    with pytest.raises(TaskError):
        sample_tasks(ds, 3, 21)
    with pytest.raises(TaskError):
        sample_tasks(ds, 7, 1)
    with pytest.raises(TaskError):
        sample_tasks(ds, 1, 1)


def test_sample_tasks_from_some_classes():
    ds = synthetic_dataset()
    some = list(ds.classes[:4])
    tasks = sample_tasks(ds, 2, 6, seed=0, classes=some)
    assert len({t.id for t in tasks}) == 6 and all(set(t.classes) <= set(some) for t in tasks)  # all C(4, 2)
    with pytest.raises(TaskError, match="from 4 classes"):
        sample_tasks(ds, 2, 7, classes=some)
    with pytest.raises(TaskError, match="unknown class"):
        sample_tasks(ds, 2, 1, classes=[*some, "no_such_class"])
    with pytest.raises(TaskError, match="N must be"):
        sample_tasks(ds, 5, 1, classes=some)


def test_sample_tasks_exclude():
    ds = synthetic_dataset(num_classes=5)
    first = sample_tasks(ds, 2, 4, seed=0)
    rest = sample_tasks(ds, 2, 6, seed=1, exclude=first)
    assert not {t.id for t in first} & {t.id for t in rest}
    assert len({t.id for t in first + rest}) == 10  # all C(5, 2)
    with pytest.raises(TaskError):
        sample_tasks(ds, 2, 7, seed=1, exclude=first)


def test_sample_tasks_exclude_of_other_n_does_not_shrink_the_pool():
    ds = synthetic_dataset(num_classes=4)
    three_way = sample_tasks(ds, 3, 4, seed=0)  # all C(4, 3) 3-way tasks
    assert len(sample_tasks(ds, 2, 6, seed=0, exclude=three_way)) == 6  # all C(4, 2) 2-way tasks


# ----------------------------------------------------------------------------- augmentation


def _batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 32, 32, generator=g)


def test_augment_none_is_identity():
    x = _batch()
    assert torch.equal(augment_batch(x, Augment.none(), torch.Generator().manual_seed(0)), x)


def test_random_crop_is_a_window_of_the_reflect_padded_image():
    x = _batch()
    out = augment_batch(x, Augment(padding=4, flip=False, cutout=0), torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    offsets = []
    for i in range(len(x)):
        found = [(dy, dx) for dy, dx in itertools.product(range(9), range(9))
                 if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert found, f"image {i} is not a 32x32 window of its padded input"
        offsets.append(found[0])
    assert len(set(offsets)) > 1 and any(o != (4, 4) for o in offsets)


def test_flip_only_gives_input_or_mirror():
    x = _batch(16)
    out = augment_batch(x, Augment(padding=0, flip=True, cutout=0), torch.Generator().manual_seed(2))
    flipped = []
    for i in range(len(x)):
        same, mirror = torch.equal(out[i], x[i]), torch.equal(out[i], x[i].flip(-1))
        assert same or mirror
        flipped.append(mirror)
    assert any(flipped) and not all(flipped)


@pytest.mark.parametrize("size", [3, 5, 8, 16])
def test_cutout_zeros_one_bounded_square(size):
    x = _batch(16) * 0.9 + 0.05  # strictly positive
    out = augment_batch(x, Augment(padding=0, flip=False, cutout=size), torch.Generator().manual_seed(3))
    for i in range(len(x)):
        zero = out[i] == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])
        z = zero[0]
        n = int(z.sum())
        assert 1 <= n <= size * size
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        # one axis-aligned rectangle, everything else untouched
        assert n == len(rows) * len(cols) == int(z[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].sum())
        assert torch.equal(out[i][~zero], x[i][~zero])


@pytest.mark.parametrize("size", [2, 8, 16])
def test_cutout_inside_the_image_is_exactly_cutout_squared(size):
    x = torch.ones(64, 3, 32, 32)
    out = augment_batch(x, Augment(padding=0, flip=False, cutout=size), torch.Generator().manual_seed(4))
    counts = (out[:, 0] == 0).flatten(1).sum(1)
    assert int(counts.max()) == size * size  # squares away from the border are not clipped


# ----------------------------------------------------------------------------- batches


def _indexed_images(n):
    """Images whose first pixel encodes their index (to identify them after batching)."""
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    return x, np.arange(n) % 3


def test_batch_loader_epoch_visits_each_image_at_most_once():
    x, y = _indexed_images(30)
    loader = BatchLoader(x, y, batch_size=8, augment=Augment.none(), seed=0)
    assert len(loader) == 3
    seen = []
    batches = list(loader.epoch())
    assert len(batches) == 3
    for xb, yb in batches:
        assert xb.shape == (8, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert 0.0 <= float(xb.min()) and float(xb.max()) <= 1.0
        idx = (xb[:, 0, 0, 0] * 255).round().long()
        np.testing.assert_array_equal(yb.numpy(), y[idx.numpy()])  # labels travel with their images
        seen += idx.tolist()
    assert len(seen) == len(set(seen)) == 24
    assert seen != list(range(24))  # shuffled


def test_batch_loader_is_seeded():
    x, y = _indexed_images(20)
    a = list(itertools.islice(iter(BatchLoader(x, y, 4, Augment(), seed=3)), 12))
    b = list(itertools.islice(iter(BatchLoader(x, y, 4, Augment(), seed=3)), 12))
    c = list(itertools.islice(iter(BatchLoader(x, y, 4, Augment(), seed=4)), 12))
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))
    # every epoch is a new permutation
    plain = BatchLoader(x, y, 4, Augment.none(), seed=3)
    ids = [[(xb[:, 0, 0, 0] * 255).round().long().tolist() for xb, _ in plain.epoch()] for _ in range(2)]
    assert ids[0] != ids[1] and sorted(sum(ids[0], [])) == sorted(sum(ids[1], [])) == list(range(20))


def test_batch_loader_rejects_too_large_batch():
    x, y = _indexed_images(5)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        BatchLoader(x, y, batch_size=6)
    with pytest.raises(ConfigError):
        BatchLoader(x, y, batch_size=0)


def test_to_float_layout():
    x = np.zeros((1, 32, 32, 3), np.uint8)
    x[0, 1, 2, 2] = 255
    t = to_float(torch.as_tensor(x))
    assert t.shape == (1, 3, 32, 32) and t[0, 2, 1, 2] == 1.0 and float(t.sum()) == 1.0


# ----------------------------------------------------------------------------- subsets


def test_subset_max_train_per_class():
    ds = synthetic_dataset()
    sub = ds.subset(max_train_per_class=5)
    assert sub.classes == ds.classes
    assert np.bincount(sub.train_labels).tolist() == [5] * 6
    np.testing.assert_array_equal(sub.test_labels, ds.test_labels)
    for c in range(6):  # the first images of each class, in order
        np.testing.assert_array_equal(sub.train_images[sub.train_labels == c], ds.train_images[ds.train_labels == c][:5])


def test_subset_of_classes_in_given_order():
    ds = synthetic_dataset()
    sub = ds.subset(["class_d", "class_a"], max_train_per_class=3)
    assert sub.classes == ["class_d", "class_a"] and sub.num_classes == 2
    np.testing.assert_array_equal(sub.train_images[sub.train_labels == 0], ds.train_images[ds.train_labels == 3][:3])
    np.testing.assert_array_equal(sub.test_images[sub.test_labels == 1], ds.test_images[ds.test_labels == 0])
    assert len(sub.test_labels) == 8


def test_image_dataset_validates_arrays():
    x = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(DataError):
        ImageDataset("d", ["a", "b"], x.astype(np.float32), np.zeros(2, np.int64), x, np.zeros(2, np.int64))
    with pytest.raises(DataError):
        ImageDataset("d", ["a", "b"], x, np.array([0, 2]), x, np.zeros(2, np.int64))
    with pytest.raises(DataError):
        ImageDataset("d", ["a", "b"], x, np.zeros(3, np.int64), x, np.zeros(2, np.int64))


def _write_idx(path, array):
    import gzip

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_converts_to_a_32px_rgb_image_folder(tmp_path):
    from metavote.data import FASHION_MNIST_CLASSES, convert_fashion_mnist, read_idx

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    for prefix, n in (("train", 40), ("t10k", 20)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        _write_idx(src / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    first = read_idx(src / "train-images-idx3-ubyte.gz")
    assert first.shape == (40, 28, 28)
    out = convert_fashion_mnist(tmp_path / "fm", src, train_per_class=3, test_per_class=1)
    dataset = load_dataset(str(out), cache_dir=tmp_path / "cache")
    assert dataset.classes == sorted(FASHION_MNIST_CLASSES)
    assert dataset.train_images.shape == (30, 32, 32, 3) and dataset.test_images.shape == (10, 32, 32, 3)
    k = dataset.classes.index("t-shirt_top")  # label 0: the first train image is source image 0
    img = dataset.train_images[np.flatnonzero(dataset.train_labels == k)[0]]
    assert np.array_equal(img[2:30, 2:30, 0], first[0]) and np.all(img[:2] == 0) and np.array_equal(img[..., 0], img[..., 2])
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist"):
        convert_fashion_mnist(tmp_path / "again", src)
    (tmp_path / "bad.gz").write_bytes(__import__("gzip").compress(b"\x00\x00\x0d\x01\x00\x00\x00\x01x"))
    with pytest.raises(DataError, match="IDX"):
        read_idx(tmp_path / "bad.gz")
