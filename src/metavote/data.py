"""Datasets, N-way tasks and batched, vectorised augmentation.

Everything here works on whole arrays: a dataset is a few uint8 arrays held in memory
(CIFAR-100 is 180 MB), a task is a view of some of its classes, and a batch is augmented
as one tensor. No per-image Python runs in a training loop.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import math
import os
import pickle
import re
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError, DataNotFoundError, TaskError
from .files import atomic_path, file_digest

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
_WNID = re.compile(r"^n\d{8}$")


# ----------------------------------------------------------------------------- datasets


@dataclass
class ImageDataset:
    """A labelled image dataset held in memory: uint8 HWC RGB arrays and int64 labels.

    ``classes[k]`` names label ``k``; ``wnids[k]`` is its WordNet id when known.
    """

    name: str
    classes: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    wnids: list[str | None] = field(default_factory=list)
    source: str | None = None  # the absolute path it was loaded from (set by load_dataset): load_dataset(source) loads it again
    folder_options: dict | None = None  # an image folder's loading options (set by load_dataset): resized() decodes it again

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
                raise DataError(f"{self.name}: {split} images must be uint8 (N, H, W, 3), got {x.dtype} {x.shape}")
            if len(x) != len(y):
                raise DataError(f"{self.name}: {len(x)} {split} images but {len(y)} labels")
            if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
                raise DataError(f"{self.name}: {split} labels outside 0..{len(self.classes) - 1}")
        if not self.wnids:
            self.wnids = [c if _WNID.match(c) else None for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_indices(self, names: Sequence[str]) -> list[int]:
        """Indices of class names, with a clear error listing unknown names and near misses."""
        lookup = {c: i for i, c in enumerate(self.classes)}
        unknown = [n for n in names if n not in lookup]
        if unknown:
            hints = []
            for n in unknown:
                close = difflib.get_close_matches(n, self.classes, n=1)
                hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TaskError(f"unknown class name(s) for {self.name}: {', '.join(hints)}")
        return [lookup[n] for n in names]

    def subset(self, classes: Sequence[str] | None = None, max_train_per_class: int | None = None) -> ImageDataset:
        """A smaller dataset: some classes (in the given order) and/or the first images of each class."""
        names = list(classes) if classes is not None else list(self.classes)
        idx = self.class_indices(names)
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[idx] = np.arange(len(idx))
        parts = []
        for split, cap in (("train", max_train_per_class), ("test", None)):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            keep = remap[y] >= 0
            if cap is not None:
                rank = np.zeros(len(y), dtype=np.int64)
                for c in idx:
                    members = np.flatnonzero(y == c)
                    rank[members] = np.arange(len(members))
                keep &= rank < cap
            parts += [x[keep], remap[y[keep]]]
        return ImageDataset(self.name, names, *parts, wnids=[self.wnids[i] for i in idx])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        return tuple(int(v) for v in self.train_images.shape[1:3])

    def resized(self, size: int | Sequence[int]) -> ImageDataset:
        """This dataset at ``size`` (pixels, or ``(height, width)``, or a model's ``(3, H, W)``
        input size): every image resized once (bilinear; antialiased when shrinking) and cached on
        disk as memory-mapped arrays that every process on the machine shares, so zoo workers
        read one copy. An image folder is decoded again from its files at that size (its own
        cache). The dataset itself when it is already at that size."""
        h, w = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(v) for v in tuple(size)[-2:])
        if not (4 <= h <= 4096 and 4 <= w <= 4096):
            raise ConfigError(f"image size must be in 4..4096 pixels, got {h}x{w}")
        if self.image_size == (h, w):
            return self
        if self.folder_options is not None and self.source and h == w:  # an image folder: decode its files at that size
            out = load_image_folder(self.source, size=h, name=self.name, **self.folder_options)
            out.source, out.folder_options = self.source, self.folder_options
            return out
        key = hashlib.sha1(f"{self.name}|{self.source}|{self.train_images.shape}|{self.test_images.shape}|{h}x{w}".encode())
        for x in (self.train_images, self.test_images, self.train_labels, self.test_labels):
            key.update(np.ascontiguousarray(x[:: max(1, len(x) // 256)]).tobytes())  # a sample of every array: cheap, and changes with the data
        stem = f"resized-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.name)}-{h}x{w}-{key.hexdigest()[:16]}"
        images = [_resized_array(x, h, w, _default_cache_dir() / f"{stem}-{split}.npy")
                  for split, x in (("train", self.train_images), ("test", self.test_images))]
        return ImageDataset(self.name, list(self.classes), images[0], self.train_labels, images[1], self.test_labels,
                            wnids=list(self.wnids), source=self.source)

    def task(self, classes: Sequence[str]) -> Task:
        """The task of these classes of this dataset (names are validated)."""
        self.class_indices(classes)
        return Task(self.name, tuple(classes))

    def load_task(self, task: Task) -> TaskData:
        """The train/test arrays of ``task`` with labels remapped to 0..N-1 (sorted class order)."""
        if task.dataset != self.name:
            raise TaskError(f"task {task.id} is a task of {task.dataset!r}, not of {self.name!r}")
        idx = self.class_indices(task.classes)
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[idx] = np.arange(len(idx))
        parts = []
        for x, y in ((self.train_images, self.train_labels), (self.test_images, self.test_labels)):
            keep = remap[y] >= 0
            parts += [x[keep], remap[y[keep]]]
        return TaskData(task, *parts, dataset_class_indices=idx)


def _check_arrays(path: Path, arrays: dict[str, np.ndarray], names: Sequence[str]) -> None:
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)}")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise DataError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); delete it and fetch it again") from e


class _PlainDataUnpickler(pickle.Unpickler):
    """Admits plain containers and numpy arrays only; any other class is refused.

    The official CIFAR pickles hold dicts of lists, bytes and one numpy array, so this is
    all they need, and a malicious pickle cannot run code through it.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")


def _load_plain_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _PlainDataUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path} is truncated, corrupt or not a plain-data pickle ({e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _decode_names(names: Sequence) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def load_cifar100(path: str | os.PathLike) -> ImageDataset:
    """CIFAR-100 from either layout.

    * npz layout: ``train.npz``, ``test.npz`` (``images``, ``fine_labels``) and ``classes.json``;
    * official ``cifar-100-python`` layout: pickles ``train``, ``test`` and ``meta``.
    """
    path = Path(path)
    if (path / "train.npz").exists():
        splits = {}
        for split in ("train", "test"):
            arrays = _load_npz(path / f"{split}.npz")
            _check_arrays(path / f"{split}.npz", arrays, ["images", "fine_labels"])
            splits[split] = arrays["images"], arrays["fine_labels"].astype(np.int64)
        try:
            classes = json.loads((path / "classes.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path / 'classes.json'} is missing or unreadable ({e})") from e
    elif (path / "meta").exists():
        meta = _load_plain_pickle(path / "meta")
        classes = _decode_names(meta["fine_label_names"])
        splits = {}
        for split in ("train", "test"):
            d = _load_plain_pickle(path / split)
            if "data" not in d or "fine_labels" not in d:
                raise DataError(f"{path / split}: not a CIFAR-100 batch (keys {sorted(d)})")
            data = np.asarray(d["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(f"{path / split}: expected (N, 3072) pixels, got {data.shape}")
            images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
            splits[split] = images, np.asarray(d["fine_labels"], dtype=np.int64)
    else:
        raise DataNotFoundError(f"{path} holds neither train.npz nor the cifar-100-python files")
    return ImageDataset("cifar100", list(classes), *splits["train"], *splits["test"])


# ----------------------------------------------------------------------------- location


def data_search_path(data: str | os.PathLike | None = None) -> list[Path]:
    """Where datasets are looked for: ``data`` alone when given (it must exist: an explicit path
    wins or fails), else ``$METAVOTE_DATA`` then ``../shared/data``."""
    if data is not None:
        if not Path(data).is_dir():
            raise DataNotFoundError(f"data root {data} does not exist or is not a folder")
        return [Path(data)]
    places: list[Path] = []
    if os.environ.get("METAVOTE_DATA"):
        places.append(Path(os.environ["METAVOTE_DATA"]))
    places.append(Path.cwd().parent / "shared" / "data")
    repo_shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    if repo_shared not in places:
        places.append(repo_shared)
    seen, unique = set(), []
    for p in places:
        key = p.resolve() if p.exists() else p
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _cifar_dir(root: Path) -> Path | None:
    for cand in (root, root / "cifar100", root / "cifar-100-python"):
        if (cand / "train.npz").exists() or (cand / "meta").exists():
            return cand
    return None


def _is_image_folder(path: Path) -> bool:
    """A folder with a ``train/`` split, or with at least one ``<class>/`` folder holding images."""
    if not path.is_dir():
        return False
    if (path / "train").is_dir():
        return True
    return any(d.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir()) for d in path.iterdir())


def load_dataset(name: str = "cifar100", data: str | os.PathLike | None = None, **folder_options) -> ImageDataset:
    """Load a dataset by name (``cifar100``, or an image-folder name under a data root) or by path.

    Raises :class:`DataNotFoundError` listing every place searched when nothing is found.
    """
    path = _find_dataset(name, data)
    folder = _cifar_dir(path) != path
    dataset = load_image_folder(path, **folder_options) if folder else load_cifar100(path)
    dataset.source = str(path.resolve())
    if folder:
        dataset.folder_options = {k: v for k, v in folder_options.items() if k != "size"}
    return dataset


def _resized_array(images: np.ndarray, h: int, w: int, cache: Path, chunk: int = 1024) -> np.ndarray:
    """uint8 NHWC ``images`` at ``h`` x ``w``, read from (or first written to) the ``.npy`` file
    ``cache`` and returned memory-mapped; a damaged cache is written again."""
    want = (len(images), h, w, 3)
    if cache.exists():
        try:
            out = np.load(cache, mmap_mode="r")
            if out.shape == want and out.dtype == np.uint8:
                return out
        except (OSError, ValueError):
            pass
    cache.parent.mkdir(parents=True, exist_ok=True)
    shrink = h * w < images.shape[1] * images.shape[2]
    with atomic_path(cache) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=want)
        for i in range(0, len(images), chunk):
            x = to_float(torch.as_tensor(np.ascontiguousarray(images[i : i + chunk])))
            y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
            out[i : i + chunk] = y.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out.flush()
        del out
    return np.load(cache, mmap_mode="r")


def _find_dataset(name: str, data: str | os.PathLike | None) -> Path:
    """The folder of dataset ``name`` (a path, ``cifar100`` or an image folder's name under a data root)."""
    if Path(name).is_dir():
        return Path(name)
    if os.sep in str(name) or str(name).startswith("."):
        raise DataNotFoundError(f"dataset {name!r} not found: no such folder")
    places = data_search_path(data)
    for root in places:
        if name == "cifar100":
            found = _cifar_dir(root)
            if found is not None:
                return found
        elif _is_image_folder(root / name):
            return root / name
    looked = ", ".join(str(p) for p in places)
    how = (
        "run `metavote data download cifar100 --data DIR` on a machine with internet, or copy the "
        "cifar-100-python folder there"
        if name == "cifar100"
        else f"put an image folder <root>/{name}/<class>/<images> there"
    )
    raise DataNotFoundError(f"dataset {name!r} not found (looked in: {looked}); pass --data PATH or set METAVOTE_DATA; {how}")


# ----------------------------------------------------------------------------- download


def download(url: str, dest: str | os.PathLike, md5: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` atomically, verifying its MD5 when given; reuses a verified file."""
    dest = Path(dest)
    if dest.exists() and (md5 is None or file_digest(dest, "md5") == md5):
        return dest
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                for chunk in iter(lambda: r.read(1 << 20), b""):
                    f.write(chunk)
        except OSError as e:
            raise DataNotFoundError(f"could not download {url}: {e}") from e
        if md5 is not None and (got := file_digest(tmp, "md5")) != md5:
            raise DataError(f"checksum mismatch for {url}: expected md5 {md5}, got {got}")
    return dest


def download_cifar100(root: str | os.PathLike, url: str = CIFAR100_URL, md5: str = CIFAR100_MD5) -> Path:
    """Download and unpack the official CIFAR-100 archive under ``root``; returns the data folder."""
    root = Path(root)
    archive = download(url, root / "cifar-100-python.tar.gz", md5)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except tarfile.TarError as e:
        raise DataError(f"{archive} is not a readable tar archive ({e})") from e
    return root / "cifar-100-python"


# ----------------------------------------------------------------------------- image folders


def _default_cache_dir() -> Path:
    return Path(os.environ.get("METAVOTE_CACHE", Path.home() / ".cache" / "metavote"))


def _list_folder(root: Path) -> dict[str, list[Path]]:
    classes = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        classes[d.name] = files
    if not classes:
        raise DataNotFoundError(f"{root} has no <class>/<image> sub-folders")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise DataError(f"class folder(s) with no images in {root}: {', '.join(empty)} (images: {', '.join(sorted(IMAGE_SUFFIXES))})")
    if len(classes) < 2:
        raise DataError(f"{root} has one class folder ({next(iter(classes))}); a task needs at least 2 classes")
    return classes


def decode_images(files: Sequence[Path], size: int) -> np.ndarray:
    """uint8 (N, size, size, 3) RGB images: each file decoded, its shorter side resized to ``size``,
    centre-cropped (as every image folder is loaded); a file that cannot be decoded is named in the error."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, f in enumerate(tqdm(files, desc="decoding images", unit="img", leave=False, disable=len(files) < 500)):
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                scale = size / min(im.size)  # shorter side to `size`, then centre crop
                w, h = max(size, round(im.width * scale)), max(size, round(im.height * scale))
                im = im.resize((w, h), Image.BILINEAR)
                left, top = (w - size) // 2, (h - size) // 2
                out[i] = np.asarray(im.crop((left, top, left + size, top + size)))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning: under `-W error`
            raise DataError(_too_many_pixels(f, isinstance(e, Image.DecompressionBombError))) from e
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot decode image {f} ({e})") from e
    return out


def _too_many_pixels(path: Path, error: bool) -> str:
    """One line on an image above PIL's decompression-bomb limit (twice ``Image.MAX_IMAGE_PIXELS`` for
    ``error``, else the limit itself), with its size read from its header."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # opening reads the header only; restored at once
    try:
        with Image.open(path) as im:
            size = f"{im.width}x{im.height} pixels"
    except Exception:  # noqa: BLE001 - the message is the point, the size is a courtesy
        size = "too large"
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return (f"image {path} is {size}, above PIL's decompression-bomb limit of {limit * (2 if error else 1):,} pixels; "
            "resize it or remove it (or, for a trusted file, raise PIL.Image.MAX_IMAGE_PIXELS)")


def load_image_folder(
    root: str | os.PathLike,
    size: int = 32,
    test_fraction: float = 0.2,
    cache_dir: str | os.PathLike | None = None,
    name: str | None = None,
) -> ImageDataset:
    """An ``root/<class>/<images>`` folder (or ``root/{train,val|test}/<class>/...``) as an in-memory dataset.

    Images are decoded, resized (shorter side to ``size``, centre crop) and cached once as a
    uint8 array keyed by the folder's file list; later loads read the cache. Without explicit
    train/test folders, each class is split deterministically with ``test_fraction`` held out.
    Folder names that are WordNet ids (``n01440764``) are kept as ``wnids``.
    """
    root = Path(root)
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist")
    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        listing = {"train": _list_folder(root / "train"), "test": _list_folder(test_dir)}
        classes = sorted(listing["train"])
        if sorted(listing["test"]) != classes:
            raise DataError(f"{root}: train and {test_dir.name} folders have different classes")
    else:
        per_class = _list_folder(root)
        classes = sorted(per_class)
        listing = {"train": {}, "test": {}}
        for c, files in per_class.items():
            order = np.random.default_rng(int(hashlib.sha1(c.encode()).hexdigest()[:8], 16)).permutation(len(files))
            n_test = max(1, round(len(files) * test_fraction)) if len(files) > 1 else 0
            listing["test"][c] = [files[i] for i in sorted(order[:n_test])]
            listing["train"][c] = [files[i] for i in sorted(order[n_test:])]

    fingerprint = hashlib.sha1(f"{root.resolve()}|{size}|{test_fraction}".encode())
    for split in ("train", "test"):
        for c in classes:
            for f in listing[split][c]:
                st = f.stat()
                fingerprint.update(f"{split}/{c}/{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = Path(cache_dir or _default_cache_dir()) / f"imagefolder-{root.name}-{fingerprint.hexdigest()[:16]}.npz"

    arrays: dict[str, np.ndarray] = {}
    if cache.exists():
        try:
            arrays = _load_npz(cache)
        except DataError:
            arrays = {}  # a damaged cache is rebuilt, never trusted
    if not arrays:
        for split in ("train", "test"):
            files = [f for c in classes for f in listing[split][c]]
            arrays[f"{split}_images"] = decode_images(files, size)
            arrays[f"{split}_labels"] = np.repeat(np.arange(len(classes)), [len(listing[split][c]) for c in classes])
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    return ImageDataset(
        name or root.name,
        classes,
        arrays["train_images"],
        arrays["train_labels"].astype(np.int64),
        arrays["test_images"],
        arrays["test_labels"].astype(np.int64),
    )


# ----------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """An N-way task: some classes of one dataset. Classes are kept sorted, so the id is stable."""

    dataset: str
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        classes = tuple(sorted(self.classes))
        if len(classes) < 2:
            raise TaskError(f"a task needs at least 2 classes, got {len(classes)}")
        if len(set(classes)) != len(classes):
            raise TaskError(f"duplicate class names in task: {', '.join(classes)}")
        object.__setattr__(self, "classes", classes)

    @property
    def id(self) -> str:
        return hashlib.sha1(f"{self.dataset}:{','.join(self.classes)}".encode()).hexdigest()[:12]

    @property
    def n_way(self) -> int:
        return len(self.classes)

    @property
    def seed(self) -> int:
        """A seed derived from the id: training on a task is deterministic without storing one."""
        return int(self.id, 16) % (2**31 - 1)

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "classes": list(self.classes)}

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return cls(d["dataset"], tuple(d["classes"]))

    def __str__(self) -> str:
        return f"{self.id} ({self.dataset}: {', '.join(self.classes)})"


@dataclass
class TaskData:
    """A task's arrays: uint8 HWC images, labels in 0..N-1 in the order of ``task.classes``."""

    task: Task
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    dataset_class_indices: list[int]

    def loader(self, batch_size: int = 128, augment: Augment | None = None, seed: int | None = None,
               device: str | torch.device | None = None) -> BatchLoader:
        return BatchLoader(
            self.train_images,
            self.train_labels,
            batch_size,
            augment if augment is not None else Augment(),
            self.task.seed if seed is None else seed,
            device,
        )


def sample_tasks(
    dataset: ImageDataset, n_way: int, count: int, seed: int = 0, exclude: Sequence[Task] = (),
    classes: Sequence[str] | None = None,
) -> list[Task]:
    """``count`` distinct N-way tasks, drawn without replacement of classes, reproducible from ``seed``;
    with ``classes``, only from those classes (a zoo or a test set of one domain)."""
    pool = list(dict.fromkeys(classes)) if classes is not None else list(dataset.classes)
    dataset.class_indices(pool)  # unknown names: a clear error
    if not 2 <= n_way <= len(pool):
        raise TaskError(f"N must be in 2..{len(pool)} for {len(pool)} classes of {dataset.name}, got {n_way}")
    if count < 0:
        raise ConfigError(f"count must be >= 0, got {count}")
    excluded = {t.id for t in exclude}
    known = set(pool)
    same_kind = {t.id for t in exclude if t.dataset == dataset.name and t.n_way == n_way and set(t.classes) <= known}
    possible = math.comb(len(pool), n_way) - len(same_kind)
    if count > possible:
        raise TaskError(f"cannot draw {count} distinct {n_way}-way tasks from {len(pool)} classes")
    rng = np.random.default_rng(seed)
    tasks: list[Task] = []
    seen = set(excluded)
    while len(tasks) < count:
        picked = rng.choice(len(pool), size=n_way, replace=False)
        task = Task(dataset.name, tuple(pool[i] for i in picked))
        if task.id not in seen:
            seen.add(task.id)
            tasks.append(task)
    return tasks


# ----------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class Augment:
    """Batch augmentation: random crop with ``padding`` (reflect; None: an eighth of the image's
    height, 4 pixels at 32, 12 at 96, so the crop is the same at every input size), horizontal
    flip, cutout of ``cutout`` pixels."""

    padding: int | None = None
    flip: bool = True
    cutout: int = 0

    @classmethod
    def none(cls) -> Augment:
        return cls(padding=0, flip=False, cutout=0)


def augment_batch(x: torch.Tensor, aug: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a float NCHW batch in place of a per-image loop: every op is one tensor op for the batch.

    The random draws come from ``generator`` on the CPU and move to ``x``'s device, so a seed gives
    the same augmentation on every device."""
    b, c, h, w = x.shape
    dev = x.device
    p = aug.padding if aug.padding is not None else max(1, h // 8)
    if p:
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        off = torch.randint(0, 2 * p + 1, (b, 2), generator=generator).to(dev)
        rows = (off[:, :1] + torch.arange(h, device=dev)).view(b, 1, h, 1).expand(b, c, h, w + 2 * p)
        x = padded.gather(2, rows)
        cols = (off[:, 1:] + torch.arange(w, device=dev)).view(b, 1, 1, w).expand(b, c, h, w)
        x = x.gather(3, cols)
    if aug.flip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
        x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    if aug.cutout:
        c = aug.cutout  # a c x c square centred anywhere in the image, clipped at the borders
        cy = (torch.randint(0, h, (b, 1), generator=generator) - c // 2).to(dev)
        cx = (torch.randint(0, w, (b, 1), generator=generator) - c // 2).to(dev)
        dy, dx = torch.arange(h, device=dev) - cy, torch.arange(w, device=dev) - cx
        inside_y = ((dy >= 0) & (dy < c)).view(b, 1, h, 1)
        inside_x = ((dx >= 0) & (dx < c)).view(b, 1, 1, w)
        x = x.masked_fill(inside_y & inside_x, 0.0)
    return x


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> contiguous float32 NCHW in [0, 1]."""
    return images.permute(0, 3, 1, 2).contiguous().float().div_(255.0)


class BatchLoader:
    """Endless shuffled training batches from uint8 arrays, augmented as whole batches.

    Iterating yields ``(images float32 NCHW in [0, 1], labels int64)``; every epoch is a new
    permutation; the sequence is fully determined by ``seed``. With a ``device`` (e.g. CUDA) the
    uint8 images are copied there once and batches are converted and augmented there.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        batch_size: int = 128,
        augment: Augment = Augment(),
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {batch_size}")
        if len(images) < batch_size:
            raise ConfigError(f"the training split has {len(images)} images, fewer than one batch of {batch_size}")
        self.device = torch.device(device or "cpu")
        self.images = torch.as_tensor(images).to(self.device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(self.device)
        self.batch_size = batch_size
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        """Batches per epoch (the last partial batch is dropped)."""
        return len(self.images) // self.batch_size

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over a fresh permutation."""
        order = torch.randperm(len(self.images), generator=self.generator)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size].to(self.device)
            yield augment_batch(to_float(self.images[idx]), self.augment, self.generator), self.labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from self.epoch()


def iterate_eval(images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Un-augmented batches over a split, in order."""
    xs, ys = torch.as_tensor(images), torch.as_tensor(labels, dtype=torch.int64)
    for i in range(0, len(xs), batch_size):
        yield to_float(xs[i : i + batch_size]), ys[i : i + batch_size]


def write_npz_dataset(dataset: ImageDataset, root: str | os.PathLike) -> Path:
    """Write ``dataset`` in the npz layout (``train.npz``, ``test.npz``, ``classes.json``) atomically."""
    root = Path(root)
    for split in ("train", "test"):
        with atomic_path(root / f"{split}.npz") as tmp:
            buf = io.BytesIO()
            np.savez(
                buf,
                images=getattr(dataset, f"{split}_images"),
                fine_labels=getattr(dataset, f"{split}_labels"),
            )
            tmp.write_bytes(buf.getvalue())
    with atomic_path(root / "classes.json") as tmp:
        tmp.write_text(json.dumps(dataset.classes))
    return root


# ----------------------------------------------------------------------------- Fashion-MNIST (an unseen dataset)

FASHION_MNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (the MNIST format, optionally gzipped) as a numpy array."""
    import gzip

    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DataError(f"{path}: header says {shape} but holds {data.size} values")
    return data.reshape(shape)


def convert_fashion_mnist(out: str | os.PathLike, source: str | os.PathLike = DEBIAN_FASHION_MNIST,
                          train_per_class: int = 500, test_per_class: int = 100) -> Path:
    """Write Fashion-MNIST as a 32x32 RGB image folder ``out/{train,val}/<class>/<n>.png`` (28x28
    grey, zero-padded by 2 pixels, replicated to 3 channels), keeping the first ``train_per_class``
    and ``test_per_class`` images of each class (CIFAR-100's 500 / 100 by default)."""
    from PIL import Image

    source, out = Path(source), Path(out)
    files = {split: [source / f"{prefix}-{kind}-idx{dim}-ubyte.gz" for kind, dim in (("images", 3), ("labels", 1))]
             for split, prefix in (("train", "train"), ("val", "t10k"))}
    missing = [str(f) for fs in files.values() for f in fs if not f.exists()]
    if missing:
        raise DataNotFoundError(f"Fashion-MNIST not found ({', '.join(missing)}); on Debian run `apt-get install dataset-fashion-mnist`")
    for (split, (images_file, labels_file)), limit in zip(files.items(), (train_per_class, test_per_class)):
        images, labels = read_idx(images_file), read_idx(labels_file)
        padded = np.repeat(np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=-1)
        for k, name in enumerate(FASHION_MNIST_CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n, i in enumerate(np.flatnonzero(labels == k)[:limit]):
                with atomic_path(folder / f"{n:05d}.png") as tmp:
                    Image.fromarray(padded[i]).save(tmp, format="PNG")
    return out
