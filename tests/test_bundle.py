"""Zoo bundles: pack -> unpack round trip, packing a read-only zoo writes nothing, merging, and
every refusal of an unsafe or damaged bundle (built here with ``tarfile``) leaves no file behind."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
import torch

from helpers import random_subnet, synthetic_dataset, tiny_backbone_file
from metavote import cli
from metavote.data import Task, sample_tasks
from metavote.methods import PruneResult
from metavote.models import load_backbone, replace_head
from metavote.pruning import extract
from metavote.training import Costs
from metavote.zoo import BundleError, Zoo, ZooError, pack_zoo, read_manifest, unpack_bundle, unpack_zoo


def pruned(backbone, n_way: int = 3, seed: int = 0) -> PruneResult:
    """A pruning result without training (fast, deterministic): a random sub-network with a task head."""
    subnet = random_subnet(backbone, keep=0.4, seed=seed)
    model = extract(backbone, subnet)
    replace_head(model, n_way)
    return PruneResult(model.eval(), subnet, Costs(flops=10**9 + seed, seconds=1.0 + seed), 0.5 + seed / 100, "ifp", {"ratio": 0.6})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One 4-record tiny zoo of the tiny backbone, as `zoo build` leaves it (method and dataset
    recorded), shared by the module (tests copy it before changing it): (zoo folder, backbone file)."""
    root = tmp_path_factory.mktemp("bundle")
    dataset = synthetic_dataset(num_classes=6, train_per_class=2, test_per_class=1)
    weights = tiny_backbone_file(root / "backbone.safetensors", dataset)
    backbone, meta = load_backbone(weights)
    with Zoo(root / "zoo", meta) as zoo:
        zoo.set_source_method("ifp")
        zoo.note_dataset(dataset.name, dataset.name)
        for i, task in enumerate(sample_tasks(dataset, 3, 4, seed=3)):
            zoo.add(task, pruned(backbone, seed=i))
    return root / "zoo", weights


@pytest.fixture(scope="module")
def bundle(built, tmp_path_factory):
    return pack_zoo(built[0], tmp_path_factory.mktemp("packed") / "zoo.tar")


def listing(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` (itself included) with its mode, and size and SHA-256 for files."""
    found = {}
    for path in [folder, *sorted(folder.rglob("*"))]:
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        found[str(path.relative_to(folder))] = (stat.S_IMODE(st.st_mode), st.st_size if path.is_file() else None, digest)
    return found


def members(bundle: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(bundle) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]


def write_tar(path: Path, items) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in items:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def refuse(bad: Path, dest: Path, match: str, capsys, backbone: Path | None = None) -> None:
    """Unpacking ``bad`` into ``dest`` (checked against ``backbone``) is refused, by Python and by
    the CLI (exit 2, one line on stderr), and writes nothing beside or at ``dest``."""
    site = dest.parent
    site.mkdir(parents=True, exist_ok=True)
    before = listing(site.parent)
    fingerprint = load_backbone(backbone)[1]["fingerprint"] if backbone else None
    with pytest.raises(BundleError, match=match) as e:
        unpack_zoo(bad, dest, backbone_fingerprint=fingerprint)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    assert listing(site.parent) == before
    capsys.readouterr()
    assert cli.main(["zoo", "unpack", str(bad), str(dest)] + (["--backbone", str(backbone)] if backbone else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("metavote: error: ") and err.count("\n") == 1 and str(bad) in err
    assert re.search(match, err)
    assert listing(site.parent) == before


def test_round_trip_keeps_records_checksums_and_outputs(built, bundle, tmp_path, capsys):
    manifest = read_manifest(bundle)
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json" and names[1:] == [f"records/{r['file']}" for r in manifest["records"]]
    assert manifest["format"] == "metavote-zoo-bundle" and manifest["version"] == 1 and manifest["metavote"]
    with Zoo(built[0], read_only=True) as zoo:
        assert manifest["backbone"]["fingerprint"] == zoo.fingerprint and manifest["backbone"]["config"] == zoo.model_config
        assert manifest["method"] == zoo.source_method == "ifp" and manifest["datasets"] == zoo.datasets
        assert [r["record_id"] for r in manifest["records"]] == [r.record_id for r in zoo]
        fields = {"task_id", "dataset", "classes", "n_way", "params", "accuracy", "flops", "seconds", "sha256", "created"}
        assert fields <= set(manifest["records"][0])

    dest = tmp_path / "users" / "zoo"
    report = unpack_bundle(bundle, dest)
    assert not report.merged and len(report.added) == 4 and report.bytes == sum(r["size"] for r in manifest["records"])
    assert sorted(p.name for p in dest.iterdir()) == ["index.sqlite", "records"]
    x = torch.rand(2, 3, 32, 32)
    with Zoo(built[0], read_only=True) as zoo, Zoo(dest) as copy:
        assert copy.fingerprint == zoo.fingerprint and copy.model_config == zoo.model_config and copy.meta.get("dataset") == zoo.meta.get("dataset")
        assert copy.source_method == "ifp" and copy.datasets == zoo.datasets
        assert copy.records() == zoo.records() and not copy.layers
        for mine, theirs in zip(copy, zoo):
            assert copy.verify(mine) and mine.sha256 == theirs.sha256
            (a, sa), (b, sb) = copy.load(mine), zoo.load(theirs)
            with torch.no_grad():
                assert torch.equal(a(x), b(x))
            assert all((sa.kept[k] == sb.kept[k]).all() for k in sa.kept)
    capsys.readouterr()
    assert cli.main(["zoo", "ls", "--zoo", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "4 record(s)" in out and all(r["record_id"] in out for r in manifest["records"])


def test_cli_pack_and_unpack_with_backbone_check(built, tmp_path, capsys):
    out = tmp_path / "ship" / "zoo.tar"
    assert cli.main(["zoo", "pack", str(built[0]), str(out)]) == 0
    said = capsys.readouterr().out
    fingerprint = read_manifest(out)["backbone"]["fingerprint"]
    assert "packed 4 record(s)" in said and fingerprint[:12] in said and f"{out.stat().st_size:,} bytes" in said
    assert cli.main(["zoo", "unpack", str(out), str(tmp_path / "zoo"), "--backbone", str(built[1])]) == 0
    assert "unpacked 4 record(s)" in capsys.readouterr().out and len(Zoo(tmp_path / "zoo", read_only=True)) == 4
    other = tiny_backbone_file(tmp_path / "other.safetensors", synthetic_dataset(num_classes=6), seed=1)
    refuse(out, tmp_path / "site" / "zoo", "not of the given backbone", capsys, backbone=other)


def test_packing_a_read_only_zoo_writes_nothing_in_it(built, tmp_path, capsys):
    folder = tmp_path / "published"
    shutil.copytree(built[0], folder)
    os.chmod(folder / "index.sqlite", 0o444)
    os.chmod(folder, 0o555)
    try:
        with Zoo(folder) as zoo:
            assert zoo.read_only  # by the permission bits (the tests may run as root)
        before = listing(folder)
        assert cli.main(["zoo", "pack", str(folder), str(tmp_path / "zoo.tar")]) == 0
        pack_zoo(folder, tmp_path / "again.tar")
        assert listing(folder) == before
        assert len(read_manifest(tmp_path / "zoo.tar")["records"]) == 4
        with pytest.raises(BundleError, match="outside the zoo folder"):
            pack_zoo(folder, folder / "records" / "zoo.tar")
        assert listing(folder) == before
    finally:
        os.chmod(folder, 0o755)


def test_a_damaged_zoo_is_not_packed(built, tmp_path, capsys):
    folder = tmp_path / "zoo"
    shutil.copytree(built[0], folder)
    with Zoo(folder, read_only=True) as zoo:
        first, second = zoo.records()[:2]
    (tmp_path / "zoo.tar").write_bytes(b"an earlier bundle")
    with open(folder / "records" / first.file, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    assert cli.main(["zoo", "pack", str(folder), str(tmp_path / "zoo.tar")]) == 2
    err = capsys.readouterr().err
    assert "checksum" in err and first.record_id in err and err.count("\n") == 1
    assert (tmp_path / "zoo.tar").read_bytes() == b"an earlier bundle"  # written atomically: the old file stays
    (folder / "records" / second.file).unlink()
    with pytest.raises(BundleError, match=f"record {second.record_id}: file .* is missing"):
        pack_zoo(folder, tmp_path / "other.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo", "zoo.tar"]


def test_a_layered_zoo_ships_every_record_it_votes_with(built, tmp_path):
    with Zoo(built[0], read_only=True) as base, Zoo.layer(base, tmp_path / "layer") as top:
        record = base.records()[0]
        model, subnet = base.load(record)
        task = Task("synthetic", ("class_a", "class_d", "class_f"))
        top.add(task, PruneResult(model, subnet, Costs(flops=10**9, seconds=1.0), 0.5, "ifp", {"ratio": 0.5}))
        voters = [r.record_id for r in top.records()]
    assert len(voters) == 5
    manifest = read_manifest(pack_zoo(tmp_path / "layer", tmp_path / "layer.tar"))
    assert [r["record_id"] for r in manifest["records"]] == voters
    with Zoo(unpack_zoo(tmp_path / "layer.tar", tmp_path / "flat")) as flat:
        assert not flat.layers and [r.record_id for r in flat] == voters and all(flat.verify(r) for r in flat)
        flat.load(flat.get(task.id))


def test_merging_into_a_zoo_of_the_same_backbone(bundle, tmp_path, capsys):
    dest = tmp_path / "zoo"
    unpack_zoo(bundle, dest)
    with Zoo(dest) as zoo:
        gone = zoo.records()[0].record_id
        zoo.remove(gone)
    report = unpack_bundle(bundle, dest)
    assert report.merged and report.added == [gone] and len(report.skipped) == 3 and not report.kept
    capsys.readouterr()
    assert cli.main(["zoo", "unpack", str(bundle), str(dest)]) == 0
    assert "added 0 record(s), skipped 4" in capsys.readouterr().out
    with Zoo(dest) as zoo:
        assert len(zoo) == 4 and all(zoo.verify(r) for r in zoo)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_refuses_a_zoo_of_another_backbone_and_a_non_zoo_folder(bundle, tmp_path, capsys):
    other = tmp_path / "other" / "zoo"
    Zoo(other, {"fingerprint": "0" * 64, "arch": "cifar_resnet18", "width": 0.125}).close()
    fingerprint = read_manifest(bundle)["backbone"]["fingerprint"]
    refuse(bundle, other, f"holds records of backbone {fingerprint[:12]}.*, zoo .* holds 000000000000", capsys)
    with Zoo(other, read_only=True) as zoo:
        assert len(zoo) == 0
    folder = tmp_path / "notes" / "folder"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("hello")
    refuse(bundle, folder, "is not empty and is not a zoo", capsys)


@pytest.mark.parametrize("case", ["traversal", "absolute", "symlink", "hardlink", "checksum", "missing", "extra", "duplicate",
                                  "directory", "size", "manifest-not-first", "not-a-tar", "truncated"])
def test_refuses_unsafe_or_damaged_bundles(bundle, tmp_path, capsys, case):
    items = members(bundle)
    manifest, records = items[0], items[1:]
    name, data = records[0][0].name, records[0][1]
    bad = tmp_path / f"{case}.tar"
    if case == "traversal":  # after the good records: they are unpacked first, then cleaned up
        write_tar(bad, items + [regular("../evil.safetensors", data)])
        match = "member '../evil.safetensors' escapes its folder"
    elif case == "absolute":
        write_tar(bad, [manifest, regular(str(tmp_path / "abs-evil.safetensors"), data)] + records)
        assert members(bad)[1][0].name.startswith("/")
        match = "is an absolute path"
    elif case == "symlink":
        link = tarfile.TarInfo(name)
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        write_tar(bad, [manifest, (link, None)] + records[1:])
        match = f"member '{name}' is a symbolic link"
    elif case == "hardlink":
        link = tarfile.TarInfo(name)
        link.type, link.linkname = tarfile.LNKTYPE, records[1][0].name
        write_tar(bad, [manifest, (link, None)] + records[1:])
        match = "is a hard link"
    elif case == "checksum":
        write_tar(bad, [manifest, regular(name, data[:-1] + bytes([data[-1] ^ 1]))] + records[1:])
        match = f"{name} has checksum .* but the manifest says"
    elif case == "missing":
        write_tar(bad, [manifest] + records[1:])
        match = f"record {read_manifest(bundle)['records'][0]['record_id']} is missing"
    elif case == "extra":
        write_tar(bad, items + [regular("records/extra.safetensors", data)])
        match = "'records/extra.safetensors' is not in its manifest"
    elif case == "duplicate":
        write_tar(bad, items + [records[0]])
        match = f"member '{name}' appears twice"
    elif case == "directory":
        folder = tarfile.TarInfo("records/sub")
        folder.type = tarfile.DIRTYPE
        write_tar(bad, [manifest, (folder, None)] + records)
        match = "'records/sub' is a directory"
    elif case == "size":
        write_tar(bad, [manifest, regular(name, data + b"\0")] + records[1:])
        match = "bytes but the manifest says"
    elif case == "manifest-not-first":
        write_tar(bad, records + [manifest])
        match = "is not a zoo bundle: its first member"
    elif case == "not-a-tar":
        bad.write_bytes(b"PK\x03\x04 this is a zip file, not a bundle" * 20)
        match = "is not a zoo bundle"
    else:
        bad.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
        match = "truncated or damaged|missing"
    refuse(bad, tmp_path / "site" / "zoo", match, capsys)
    assert not (tmp_path / "abs-evil.safetensors").exists() and not (tmp_path / "evil.safetensors").exists()


def test_refuses_an_unsafe_or_foreign_manifest(bundle, tmp_path, capsys):
    items = members(bundle)
    manifest = json.loads(items[0][1])

    def with_manifest(m: dict, name: str) -> Path:
        return write_tar(tmp_path / name, [regular("manifest.json", json.dumps(m).encode())] + items[1:])

    unsafe = json.loads(json.dumps(manifest))
    unsafe["records"][0]["file"] = "../../evil.safetensors"
    refuse(with_manifest(unsafe, "unsafe.tar"), tmp_path / "site" / "zoo", "unsafe record file", capsys)
    newer = manifest | {"version": 99}
    refuse(with_manifest(newer, "newer.tar"), tmp_path / "site" / "zoo", "format version 99.*upgrade metavote", capsys)
    foreign = manifest | {"format": "something-else"}
    with pytest.raises(ZooError, match="is not a zoo bundle"):
        read_manifest(with_manifest(foreign, "foreign.tar"))


def test_merging_keeps_the_zoos_own_version_unless_replace(built, bundle, tmp_path, capsys):
    dest = tmp_path / "zoo"
    unpack_zoo(bundle, dest)
    backbone, _ = load_backbone(built[1])
    with Zoo(dest) as zoo:
        mine = zoo.add(zoo.records()[0].task, pruned(backbone, seed=9))
    capsys.readouterr()
    assert cli.main(["zoo", "unpack", str(bundle), str(dest)]) == 0
    assert "kept the zoo's own version of 1 record(s)" in capsys.readouterr().out
    with Zoo(dest) as zoo:
        assert zoo.get(mine.record_id).sha256 == mine.sha256
    report = unpack_bundle(bundle, dest, replace=True)
    assert report.added == [mine.record_id] and len(report.skipped) == 3
    with Zoo(dest) as zoo:
        theirs = next(r for r in read_manifest(bundle)["records"] if r["record_id"] == mine.record_id)
        assert zoo.get(mine.record_id).sha256 == theirs["sha256"] and all(zoo.verify(r) for r in zoo)
