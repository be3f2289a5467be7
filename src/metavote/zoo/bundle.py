"""Zoo bundles: one file that ships a zoo to its users (:func:`pack_zoo`, :func:`unpack_zoo`).

A bundle is one **uncompressed** tar file (safetensors weights are dense float tensors that do
not compress much, and an uncompressed tar can be checked while it streams). Its first member is
``manifest.json``::

    {"format": "metavote-zoo-bundle", "version": 1, "metavote": "0.2.0", "created": <Unix time>,
     "backbone": {"fingerprint", "arch", "config", "dataset"},   # the zoo's meta
     "method": <the zoo's source method>, "datasets": {<name>: {"source", "path", "data"}},
     "records": [{"record_id", "task_id", "dataset", "classes", "n_way", "method", "params",
                  "accuracy", "flops", "seconds", "file", "size", "sha256", "created"}, ...]}

then ``records/<file>`` for each record, in the manifest's order. Only records of status ``ok``
are shipped (failed rows are the builder's business), and a layered zoo ships every record its
stack votes with, so a bundle is self-contained. No SQLite file travels: the index of the
unpacked zoo is rebuilt from the manifest.

Packing opens the zoo read-only (a published, read-only zoo is packed without a file in it being
created or changed), checks every record file against its checksum while it streams into the
bundle (a damaged zoo is refused, not shipped) and writes the bundle atomically.

Unpacking never extracts blindly: every member is checked (only ``manifest.json`` and regular
files ``records/<name>.safetensors`` named by the manifest; no absolute paths, ``..``, links,
devices or duplicates), every file is hashed while it is copied and compared with the manifest,
and every record of the manifest must be there. Files go to a temporary folder beside the
destination, which becomes the zoo by one rename only when everything checked out. Into an
existing zoo of the same backbone the bundle is merged (records it already has, by checksum, are
skipped); a zoo of another backbone, or a folder that is not a zoo and not empty, is refused.
Every refusal is a :class:`BundleError` of one line naming the bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from safetensors import SafetensorError, safe_open

from ..data import Task
from ..errors import TaskError, one_line
from ..files import _umask, atomic_path
from .store import INDEX, Zoo, ZooError, ZooRecord, unwritable

FORMAT = "metavote-zoo-bundle"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20
"""A manifest larger than this is refused unread (a record takes about 500 bytes of it)."""
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\.safetensors")
_CHUNK = 1 << 20
_COMPRESSED = {"gzip": b"\x1f\x8b", "bzip2": b"BZh", "xz": b"\xfd7zXZ", "zstd": b"\x28\xb5\x2f\xfd"}
_RECORD_FIELDS = {"record_id": str, "task_id": str, "dataset": str, "classes": list, "n_way": int, "method": str, "params": dict,
                  "file": str, "size": int, "sha256": str, "created": (int, float)}


class BundleError(ZooError):
    """A zoo bundle cannot be written or is refused: damaged, unsafe, or of another backbone."""


@dataclass
class UnpackReport:
    """What :func:`unpack_bundle` did: the zoo folder, whether it merged into an existing zoo, the
    record ids added, skipped (the zoo had them with the same checksum) and kept (the zoo had
    another version of them and ``replace`` was off), the bytes of record files checked and the backbone."""

    path: Path
    fingerprint: str
    merged: bool = False
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    bytes: int = 0


def _version() -> str:
    import metavote  # here, not at the top: metavote's __init__ imports this module

    version = getattr(metavote, "__version__", None)
    if version:
        return str(version)
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return dist_version("metavote")
    except PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- packing


class _Hashing(io.RawIOBase):
    """A read-only file that hashes what is read through it."""

    def __init__(self, f) -> None:
        self.f, self.h = f, hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.h.update(data)
        return data


def _record_entry(r: ZooRecord, size: int) -> dict:
    return {"record_id": r.record_id, "task_id": r.task_id, "dataset": r.task.dataset, "classes": list(r.task.classes),
            "n_way": r.task.n_way, "method": r.method, "params": r.params, "accuracy": r.accuracy, "flops": r.flops,
            "seconds": r.seconds, "file": r.file, "size": size, "sha256": r.sha256, "created": r.created}


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, int(mtime), 0o644, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def pack_zoo(zoo_dir: str | os.PathLike, out_file: str | os.PathLike) -> Path:
    """Write the zoo at ``zoo_dir`` (every record of status ok, with those of the zoos it is
    layered on) into the bundle ``out_file``; returns its path.

    The zoo is opened read-only and nothing in its folder is created or changed. Every record file
    is checked against the index's SHA-256 while it is copied: a missing or damaged file refuses
    the whole bundle (no partial bundle is left; an earlier file at ``out_file`` stays)."""
    out = Path(out_file)
    with Zoo(zoo_dir, read_only=True) as zoo:
        roots = [z.root.resolve() for z in (zoo, *zoo.layers)]
        if any(out.resolve().is_relative_to(root) for root in roots):
            raise BundleError(f"write the bundle outside the zoo folder, not to {out}")
        records = zoo.records(status="ok")
        entries, paths, names = [], [], set()
        for r in records:
            path = zoo.record_path(r)
            if not r.file or not _FILE_NAME.fullmatch(r.file) or r.file in names:
                raise BundleError(f"zoo {zoo.root}: record {r.record_id} has an unexpected file name {r.file!r}; not packing it")
            names.add(r.file)
            try:
                size = path.stat().st_size
            except OSError:
                raise BundleError(f"zoo {zoo.root}: record {r.record_id}: file {path} is missing; a damaged zoo is not packed "
                                  "(rebuild it with `metavote zoo build`)") from None
            entries.append(_record_entry(r, size))
            paths.append(path)
        manifest = {"format": FORMAT, "version": VERSION, "metavote": _version(), "created": time.time(),
                    "backbone": {"fingerprint": zoo.fingerprint, "arch": zoo.model_config["arch"], "config": zoo.model_config,
                                 "dataset": zoo.meta.get("dataset")},
                    "method": zoo.source_method, "datasets": zoo.datasets, "records": entries}
        root = zoo.root
    data = json.dumps(manifest, indent=1, sort_keys=False).encode()
    try:
        with atomic_path(out) as tmp:
            with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_tarinfo(MANIFEST, len(data), manifest["created"]), io.BytesIO(data))
                for entry, path in zip(entries, paths):
                    _add_checked(tar, root, entry, path)
    except OSError as e:
        raise BundleError(f"cannot write the bundle {out}: {e.strerror or e}") from e
    return out


def _add_checked(tar: tarfile.TarFile, root: Path, entry: dict, path: Path) -> None:
    """Copy one record file into the tar, hashing it as it streams; refuse it unless it is the file the index names."""
    where = f"zoo {root}: record {entry['record_id']}"
    try:
        f = open(path, "rb")
    except OSError:
        raise BundleError(f"{where}: file {path} is missing or unreadable; a damaged zoo is not packed") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size != entry["size"]:
            raise BundleError(f"{where}: file {path} changed while it was packed")
        reader = _Hashing(f)
        try:
            tar.addfile(_tarinfo(f"records/{entry['file']}", size, entry["created"]), reader)
        except OSError as e:
            if "unexpected end of data" in str(e):
                raise BundleError(f"{where}: file {path} shrank while it was packed") from None
            raise
    digest = reader.h.hexdigest()
    if digest != entry["sha256"]:
        raise BundleError(f"{where}: {path} has checksum {digest[:16]}... but the index says {str(entry['sha256'])[:16]}...; "
                          "a damaged zoo is not packed (rebuild the record with `metavote zoo build`)")


# ----------------------------------------------------------------------------- reading


def _open(bundle: Path) -> tarfile.TarFile:
    if not bundle.is_file():
        raise BundleError(f"bundle {bundle} does not exist" if not bundle.exists() else f"bundle {bundle} is not a file")
    try:
        return tarfile.open(bundle, "r:")
    except (tarfile.TarError, EOFError, OSError) as e:
        with open(bundle, "rb") as f:
            magic = f.read(6)
        packed = next((name for name, m in _COMPRESSED.items() if magic.startswith(m)), None)
        why = f"it is {packed}-compressed: decompress it first" if packed else f"not an uncompressed tar file: {one_line(e)}"
        raise BundleError(f"{bundle} is not a zoo bundle ({why})") from e


def _next(tar: tarfile.TarFile, bundle: Path) -> tarfile.TarInfo | None:
    try:
        return tar.next()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BundleError(f"bundle {bundle} is truncated or damaged ({one_line(e)})") from e


def _read_manifest(tar: tarfile.TarFile, bundle: Path) -> dict:
    first = _next(tar, bundle)
    if first is None or first.name != MANIFEST:
        raise BundleError(f"{bundle} is not a zoo bundle: its first member is {first.name if first else None!r}, not {MANIFEST}")
    if first.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or first.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"bundle {bundle}: {MANIFEST} is not a regular file of at most {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = json.loads(tar.extractfile(first).read())
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BundleError(f"bundle {bundle} is truncated or damaged ({one_line(e)})") from e
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"bundle {bundle}: {MANIFEST} is not valid JSON ({one_line(e)})") from e
    _check_manifest(manifest, bundle)
    return manifest


def _check_manifest(m, bundle: Path) -> None:
    def bad(why: str) -> BundleError:
        return BundleError(f"bundle {bundle}: its manifest {why}")

    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BundleError(f"{bundle} is not a zoo bundle (its {MANIFEST} is not a {FORMAT} manifest)")
    if not isinstance(m.get("version"), int) or m["version"] > VERSION:
        raise bad(f"has format version {m.get('version')!r}; this metavote ({_version()}) reads version {VERSION}: upgrade metavote")
    backbone = m.get("backbone")
    if not isinstance(backbone, dict) or not isinstance(backbone.get("fingerprint"), str) or not isinstance(backbone.get("config"), dict) \
            or not isinstance(backbone["config"].get("arch"), str):
        raise bad("names no backbone (fingerprint and config)")
    if not isinstance(m.get("datasets", {}), dict) or not isinstance(m.get("method", ""), str) or not isinstance(m.get("records"), list):
        raise bad("is malformed (datasets, method or records)")
    ids, files = set(), set()
    for i, r in enumerate(m["records"]):
        if not isinstance(r, dict):
            raise bad(f"is malformed (record {i} is not an object)")
        for key, kind in _RECORD_FIELDS.items():
            if not isinstance(r.get(key), kind) or isinstance(r.get(key), bool):
                raise bad(f"is malformed (record {r.get('record_id', i)!r} has no valid {key!r})")
        if any(r.get(k) is not None and (not isinstance(r[k], (int, float)) or isinstance(r[k], bool)) for k in ("accuracy", "flops", "seconds")):
            raise bad(f"is malformed (record {r['record_id']!r} has a non-numeric accuracy, flops or seconds)")
        if not _FILE_NAME.fullmatch(r["file"]):
            raise bad(f"names an unsafe record file {r['file']!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", r["sha256"]) or r["size"] < 0:
            raise bad(f"is malformed (record {r['record_id']!r} has no valid sha256 or size)")
        try:
            task = Task(r["dataset"], tuple(map(str, r["classes"])))
        except TaskError as e:
            raise bad(f"is malformed (record {r['record_id']!r}: {e})") from e
        if task.id != r["task_id"] or task.n_way != r["n_way"] or list(task.classes) != r["classes"]:
            raise bad(f"is malformed (record {r['record_id']!r}: its task id or size does not match its dataset and classes)")
        if r["record_id"] in ids or r["file"] in files:
            raise bad(f"lists record {r['record_id']} twice")
        ids.add(r["record_id"])
        files.add(r["file"])


def read_manifest(bundle_file: str | os.PathLike) -> dict:
    """The manifest of a bundle (checked to be one: format, version, backbone, well-formed records).
    Only the first member is read."""
    bundle = Path(bundle_file)
    with _open(bundle) as tar:
        return _read_manifest(tar, bundle)


# ----------------------------------------------------------------------------- unpacking


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.isdir():
        return "a directory"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a named pipe"
    if member.type == tarfile.GNUTYPE_SPARSE or member.issparse():
        return "a sparse file"
    return f"a member of type {member.type!r}"


def _check_member(member: tarfile.TarInfo, bundle: Path, wanted: dict[str, dict], seen: set[str]) -> dict | None:
    """The manifest entry of a record member, None for the records/ folder, or a refusal."""
    name = member.name
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise BundleError(f"bundle {bundle}: member {name!r} is an absolute path (it escapes its folder)")
    if ".." in parts or ".." in name.split("\\"):
        raise BundleError(f"bundle {bundle}: member {name!r} escapes its folder")
    if member.isdir() and name.rstrip("/") == "records":
        if "records/" in seen:
            raise BundleError(f"bundle {bundle}: member {name!r} appears twice")
        seen.add("records/")
        return None
    if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
        raise BundleError(f"bundle {bundle}: member {name!r} is {_kind(member)}; a bundle holds regular files only")
    if name in seen:
        raise BundleError(f"bundle {bundle}: member {name!r} appears twice")
    seen.add(name)
    entry = wanted.get(name)
    if entry is None:
        raise BundleError(f"bundle {bundle}: member {name!r} is not in its manifest")
    if member.size != entry["size"]:
        raise BundleError(f"bundle {bundle}: {name} has {member.size} bytes but the manifest says {entry['size']}")
    return entry


def _copy_checked(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, bundle: Path, entry: dict) -> None:
    """Copy a member to ``target``, hashing it as it streams, and check it against the manifest."""
    h = hashlib.sha256()
    try:
        src = tar.extractfile(member)
        with open(target, "xb") as out:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
    except (tarfile.TarError, EOFError) as e:
        raise BundleError(f"bundle {bundle} is truncated or damaged ({one_line(e)})") from e
    digest = h.hexdigest()
    if digest != entry["sha256"]:
        raise BundleError(f"bundle {bundle}: {member.name} has checksum {digest[:16]}... but the manifest says {entry['sha256'][:16]}...")
    try:
        with safe_open(str(target), "pt") as f:
            made_for = (f.metadata() or {}).get("backbone")
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"bundle {bundle}: {member.name} is not a readable safetensors file ({one_line(e)})") from e
    if made_for and made_for != entry["_fingerprint"]:
        raise BundleError(f"bundle {bundle}: {member.name} was made from backbone {made_for[:12]}..., "
                          f"not the manifest's {entry['_fingerprint'][:12]}...")


def _extract(tar: tarfile.TarFile, bundle: Path, manifest: dict, records_dir: Path) -> int:
    """Check and copy every record member into ``records_dir``; returns the bytes copied."""
    fingerprint = manifest["backbone"]["fingerprint"]
    wanted = {f"records/{r['file']}": r | {"_fingerprint": fingerprint} for r in manifest["records"]}
    seen: set[str] = {MANIFEST}
    total = 0
    while (member := _next(tar, bundle)) is not None:
        entry = _check_member(member, bundle, wanted, seen)
        if entry is not None:
            _copy_checked(tar, member, records_dir / entry["file"], bundle, entry)
            total += member.size
    for r in manifest["records"]:
        if f"records/{r['file']}" not in seen:
            raise BundleError(f"bundle {bundle}: record {r['record_id']} is missing (no records/{r['file']})")
    return total


def _zoo_record(r: dict) -> ZooRecord:
    task = Task(r["dataset"], tuple(r["classes"]))  # checked by _check_manifest
    return ZooRecord(r["record_id"], task, r["method"], r["params"], "ok", r.get("accuracy"), r.get("flops"), r.get("seconds"),
                     r["file"], r["sha256"], None, float(r["created"]))


def _backbone_meta(manifest: dict) -> dict:
    b = manifest["backbone"]
    return {"fingerprint": b["fingerprint"], "config": b["config"], "arch": b["config"]["arch"], "dataset": b.get("dataset")}


def _record_meta(zoo: Zoo, manifest: dict) -> None:
    for name, entry in (manifest.get("datasets") or {}).items():
        if isinstance(entry, dict):
            zoo.note_dataset(name, entry.get("source") or name, entry.get("path"), entry.get("data"))
    if manifest.get("method"):
        zoo.set_source_method(manifest["method"])


def unpack_bundle(bundle_file: str | os.PathLike, dest_dir: str | os.PathLike, backbone_fingerprint: str | None = None,
                  replace: bool = False) -> UnpackReport:
    """:func:`unpack_zoo` that also says what it did (an :class:`UnpackReport`)."""
    bundle, dest = Path(bundle_file), Path(dest_dir)
    with _open(bundle) as tar:
        manifest = _read_manifest(tar, bundle)
        fingerprint = manifest["backbone"]["fingerprint"]
        if backbone_fingerprint is not None and backbone_fingerprint != fingerprint:
            raise BundleError(f"bundle {bundle} holds records of backbone {fingerprint[:12]}..., "
                              f"not of the given backbone {backbone_fingerprint[:12]}...")
        merge = (dest / INDEX).exists()
        if merge:  # look before touching: a refused zoo is left exactly as it was
            with Zoo(dest, read_only=True) as peek:
                held = str(peek.meta.get("fingerprint"))
            if held != fingerprint:
                raise BundleError(f"bundle {bundle} holds records of backbone {fingerprint[:12]}..., zoo {dest} holds {held[:12]}...")
            why = unwritable(dest)
            if why:
                raise BundleError(f"zoo {dest} is read-only ({why}); unpack bundle {bundle} into another folder")
        elif dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise BundleError(f"{dest} exists, is not empty and is not a zoo; unpack bundle {bundle} into a new folder")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpack-", dir=dest.parent))
        except OSError as e:
            raise BundleError(f"cannot unpack bundle {bundle} into {dest}: {e.strerror or e}") from e
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # the zoo folder it becomes gets a new folder's mode, not mkdtemp's 0700
            (tmp / "records").mkdir()
            report = UnpackReport(dest, fingerprint, merged=merge)
            report.bytes = _extract(tar, bundle, manifest, tmp / "records")
            records = [_zoo_record(r) for r in manifest["records"]]
            if merge:
                with Zoo(dest, _backbone_meta(manifest)) as zoo:
                    _merge(zoo, tmp / "records", manifest, records, replace, report)
            else:
                _make_zoo(tmp, manifest, records)
                report.added = [r.record_id for r in records]
                os.rename(tmp, dest)  # the one step that makes the zoo appear
        except BundleError:
            raise
        except ZooError as e:
            raise BundleError(f"bundle {bundle}: {one_line(e)}") from e
        except OSError as e:
            raise BundleError(f"cannot unpack bundle {bundle} into {dest}: {e.strerror or e}") from e
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return report


def _make_zoo(folder: Path, manifest: dict, records: list[ZooRecord]) -> None:
    with Zoo(folder, _backbone_meta(manifest), read_only=False) as zoo:
        zoo._conn.execute("PRAGMA synchronous = NORMAL")  # a temporary folder: one sync when it closes, not one per row
        _record_meta(zoo, manifest)  # before the rows: a zoo with rows and no datasets recorded takes them from its rows
        for r in records:
            zoo._put(r)


def _merge(zoo: Zoo, staged: Path, manifest: dict, records: list[ZooRecord], replace: bool, report: UnpackReport) -> None:
    """Move the staged files of records ``zoo`` lacks into it, then insert their rows (file first, as :meth:`Zoo.add` does)."""
    have = {r.record_id: r for r in zoo.records(status="ok")}
    for r in records:
        old = have.get(r.record_id)
        if old is not None and old.sha256 == r.sha256 and zoo.verify(old):
            report.skipped.append(r.record_id)
            continue
        if old is not None and not replace and zoo.verify(old):
            report.kept.append(r.record_id)
            continue
        os.replace(staged / r.file, zoo.root / "records" / r.file)
        zoo._put(r)
        report.added.append(r.record_id)
    _record_meta(zoo, manifest)


def unpack_zoo(bundle_file: str | os.PathLike, dest_dir: str | os.PathLike, backbone_fingerprint: str | None = None,
               replace: bool = False) -> Path:
    """Unpack the bundle ``bundle_file`` into the zoo folder ``dest_dir``; returns its path.

    ``dest_dir`` is a new (or empty) folder, which becomes the zoo only when every member checked
    out, or an existing zoo of the same backbone, into which the bundle's records are merged:
    those it holds with the same checksum are skipped, and those it holds in another version are
    kept unless ``replace``. With ``backbone_fingerprint`` a bundle of another backbone is refused
    before anything is unpacked. Refusals raise :class:`BundleError` and leave no file behind."""
    return unpack_bundle(bundle_file, dest_dir, backbone_fingerprint, replace).path
