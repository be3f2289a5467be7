"""Zoos people can share: read-only zoos, layers on them, and the neighbour search over stored task
embeddings (an ANN index, LEEP on the candidates only)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from metavote.bench import BenchContext, bench_tasks
from metavote.cli import main
from metavote.models import load_backbone
from metavote.search import INDEX_FILE, STORE, SearchError, TaskEmbedder, VectorIndex, ZooSearch
from metavote.similarity import LEEPSimilarity, nearest
from metavote.training import Costs
from metavote.zoo import Zoo, ZooError

TINY = ["--ratio", "0.5", "--iterations", "2", "--batch-size", "8", "--quiet"]


def listing(folder: Path) -> dict:
    """Every file under ``folder`` with its mode, size, modification time and SHA-256."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                           hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
    return out


def make_read_only(zoo: Path) -> None:
    """Mark a zoo read-only by its permission bits (the tests run as root, which the bits alone do not stop)."""
    for p in [*zoo.rglob("*"), zoo]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)


@pytest.fixture()
def ctx(small_zoo):
    zoo, dataset, _, _ = small_zoo
    backbone, meta = load_backbone(zoo.root.parent / "backbone.safetensors")
    return BenchContext(backbone, meta.get("classes"), dataset, zoo)


def cli_common(zoo: Path) -> list[str]:
    return ["--data", str(zoo.parent / "data"), "--backbone", str(zoo.parent / "backbone.safetensors")]


# ----------------------------------------------------------------------------- read-only zoos and layers


def test_a_read_only_zoo_is_used_and_layered_without_a_file_changing(ctx, tmp_path, capsys, monkeypatch):
    root = ctx.zoo.root
    ctx.zoo.close()
    make_read_only(root)
    before = listing(root)
    monkeypatch.setenv("METAVOTE_CACHE", str(tmp_path / "cache"))
    zoo = Zoo(root)
    assert zoo.read_only == "its folder is marked read-only" and len(zoo) == 6
    with pytest.raises(ZooError, match="is read-only .*--save-to DIR"):
        zoo.add_failure(zoo.records()[0].task, "ifp", {}, "x")
    assert zoo.cache_dir.is_relative_to(tmp_path / "cache")  # derived files go to the user's cache
    zoo.close()

    task = bench_tasks(ctx.dataset, Zoo(root), 1)[0]
    layer = tmp_path / "mine"
    prune = ["prune", "--zoo", str(root), *cli_common(root), "--classes", ",".join(task.classes), *TINY, "--neighbours", "2", "--method", "mvp"]
    assert main([*prune, "--save-to", str(layer)]) == 0
    out = capsys.readouterr().out
    assert f"saved to zoo {layer} as {task.id}.mvp" in out
    assert listing(root) == before  # not a byte, mode or time changed in the read-only zoo

    stacked = Zoo(layer)  # the layer alone opens the stack
    assert [z.root for z in stacked.layers] == [root.resolve()] and len(stacked) == 7
    origins = {r.record_id: r.origin for r in stacked.records()}
    assert origins[f"{task.id}.mvp"] == layer and sum(o == root.resolve() for o in origins.values()) == 6
    assert stacked.source_method == "ifp" and stacked.dataset_source()[0] == str((root.parent / "data").resolve())
    model, _ = stacked.load(stacked.records()[0])  # a lower layer's record loads through the stack
    assert model.num_classes == 3
    with pytest.raises(ZooError, match="read-only layer"):
        stacked.remove(stacked.records()[0].record_id)

    assert main(["zoo", "ls", "--zoo", str(layer)]) == 0
    ls = capsys.readouterr().out
    assert f"layered on L1 = {root.resolve()}" in ls and f"{task.id}.mvp" in ls and " own " in ls and " L1 " in ls
    # MVP on the stack votes with both layers' IFP records; a second prune goes to the same layer by default
    monkeypatch.chdir(tmp_path)
    task2 = bench_tasks(ctx.dataset, stacked, 1, seed=5)[0]
    assert main(["prune", "--zoo", str(root), *cli_common(root), "--classes", ",".join(task2.classes), *TINY, "--neighbours", "2"]) == 0
    out = capsys.readouterr().out
    default = Path("runs") / "layers" / root.resolve().name
    assert "is read-only" in out and f"saved to zoo {default} as" in out and (tmp_path / default / "index.sqlite").exists()
    assert listing(root) == before
    # every record competes when asked (the layer's 2-step MVP record too), and `zoo refine` trains it to the zoo's 4 steps
    assert main(["prune", "--zoo", str(layer), *cli_common(root), "--classes", ",".join(task2.classes), *TINY, "--method", "mvp",
                 "--neighbours", "7", "--zoo-method", "all", "--quality", "1", "--no-save"]) == 0
    assert f"{task.id} (" in capsys.readouterr().out
    assert main(["zoo", "refine", "--zoo", str(layer), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "1 record(s) trained for fewer than 4 steps" in out and f"{task.id}.mvp" in out and "2 -> 4" in out
    assert listing(root) == before


def test_read_only_on_request_writes_nothing_and_refuses_writes_in_one_line(ctx, capsys, tmp_path, monkeypatch):
    root = ctx.zoo.root
    ctx.zoo.close()
    Zoo(root).close()  # a cleanly closed zoo: no write-ahead log left
    before = listing(root)
    monkeypatch.setenv("METAVOTE_CACHE", str(tmp_path / "cache"))
    for spec, kwargs in ((f"{root}?mode=ro", {}), (f"file:{root}?mode=ro", {}), (str(root), {"read_only": True})):
        with Zoo(spec, **kwargs) as zoo:
            assert zoo.read_only == "opened read-only" and len(zoo.records()) == 6 and zoo.load(zoo.records()[0])
    assert listing(root) == before  # no -wal or -shm file, nothing touched
    with pytest.raises(ZooError, match="unknown zoo option"):
        Zoo(f"{root}?mode=rx")
    assert main(["zoo", "build", "--zoo", f"{root}?mode=ro", *cli_common(root), "--dataset", str(root.parent / "data"),
                 "--tasks", "1", "--n-way", "3", "--iterations", "2", "--batch-size", "8", "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is read-only (opened read-only)" in err
    assert listing(root) == before


def test_a_layer_refuses_another_backbone_and_itself(ctx, tmp_path):
    from test_zoo import backbone_meta

    other = Zoo(tmp_path / "other", backbone_meta("a" * 64))
    other.close()
    with pytest.raises(ZooError, match="not from the given"):
        Zoo.layer(ctx.zoo, tmp_path / "other")
    with pytest.raises(ZooError, match="layered on itself"):
        Zoo.layer(ctx.zoo, ctx.zoo.root)


# ----------------------------------------------------------------------------- the search


def test_search_with_every_record_a_candidate_is_leep_on_its_images(ctx):
    """When the candidates cover the pool, the search is LEEP on ``leep_images`` per class, exactly."""
    target = ctx.dataset.load_task(bench_tasks(ctx.dataset, ctx.zoo, 1)[0])
    with ZooSearch(ctx.zoo, ctx.backbone, ctx.dataset, candidates=6, embed_images=3, leep_images=4) as search:
        costs = Costs()
        found = search.nearest(target, 3, costs=costs)
    exhaustive = nearest(ctx.zoo, target, 3, LEEPSimilarity(4))
    assert [r.record_id for r, _ in found] == [r.record_id for r, _ in exhaustive]
    assert np.allclose([s for _, s in found], [s for _, s in exhaustive])
    leep_only = Costs()
    nearest(ctx.zoo, target, 3, LEEPSimilarity(4), costs=leep_only)
    assert costs.flops > leep_only.flops  # the target's embedding is charged too


def test_embeddings_are_stored_once_and_the_index_follows_the_zoo(ctx, monkeypatch):
    search = ZooSearch(ctx.zoo, ctx.backbone, ctx.dataset, candidates=2)
    index = search.index()
    assert index.kind == "exact" and len(index) == 6
    assert (ctx.zoo.root / STORE).exists() and (ctx.zoo.root / INDEX_FILE).exists()
    search.close()

    def no_embedding(*args, **kwargs):
        raise AssertionError("an embedding was computed again")

    monkeypatch.setattr(TaskEmbedder, "records", no_embedding)
    monkeypatch.setattr(ZooSearch, "embeddings", no_embedding)
    again = ZooSearch(ctx.zoo, ctx.backbone, ctx.dataset, candidates=2)
    assert again.index().ids == index.ids  # from the index file and its ids: no embedding read or computed
    target = ctx.dataset.load_task(bench_tasks(ctx.dataset, ctx.zoo, 1)[0])
    found = again.nearest(target, 2)
    assert len(found) == 2 and target.task.id not in {r.task.id for r, _ in found}
    monkeypatch.undo()

    # a new record (here: a copy of one under another method) gets its embedding and joins the index
    r = ctx.zoo.records()[0]
    ctx.zoo.put_records([type(r)(f"{r.task.id}.copy", r.task, "copy", r.params, "ok", r.accuracy, r.flops, r.seconds, r.file, r.sha256)])
    assert len(again.index()) == 7
    # pool filtering: only the records asked for come back
    pool = [x for x in ctx.zoo.records() if x.method == "copy"] + ctx.zoo.records(method="ifp")[:2]
    assert {x.record_id for x, _ in again.nearest(target, 2, pool)} <= {x.record_id for x in pool}
    again.close()


def test_a_damaged_index_is_rebuilt_and_a_foreign_store_is_one_line(ctx, capsys):
    with ZooSearch(ctx.zoo, ctx.backbone, ctx.dataset) as search:
        search.index()
    file = ctx.zoo.root / INDEX_FILE
    file.write_bytes(b"not an index")
    with ZooSearch(ctx.zoo, ctx.backbone, ctx.dataset) as search, pytest.warns(UserWarning, match="unreadable.*rebuilding"):
        assert len(search.index()) == 6
    assert file.read_bytes() != b"not an index"

    with sqlite3.connect(ctx.zoo.root / STORE) as conn:  # embeddings of another dimension under the same key
        conn.execute("UPDATE embeddings SET dim = 7")
    conn.close()
    file.unlink()  # (the index is derived: without it the embeddings are read)
    with ZooSearch(ctx.zoo, ctx.backbone, ctx.dataset) as search, pytest.raises(SearchError, match="dimension 7, the backbone gives"):
        search.index()
    zoo = ctx.zoo.root
    task = bench_tasks(ctx.dataset, ctx.zoo, 1)[0]
    assert main(["prune", "--zoo", str(zoo), *cli_common(zoo), "--classes", ",".join(task.classes), *TINY, "--neighbours", "2",
                 "--similarity", "ann", "--method", "mvp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "delete the file to recompute them" in err


def test_the_hnsw_index_finds_the_nearest_vectors(tmp_path, monkeypatch):
    import metavote.search as search

    monkeypatch.setattr(search, "EXACT_LIMIT", 10)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    ids = [f"r{i}" for i in range(500)]
    index = VectorIndex.build(ids, vectors, tmp_path / INDEX_FILE, stamp="s1")
    assert index.kind == "hnsw" and (tmp_path / INDEX_FILE).exists()
    q = vectors[42] + 0.01 * rng.standard_normal(16).astype(np.float32)
    assert index.query(q, 1)[0][0] == "r42"
    reopened = VectorIndex.open(tmp_path / INDEX_FILE, "s1", dim=16)
    assert reopened.kind == "hnsw" and reopened.query(q, 5) == index.query(q, 5)
    assert VectorIndex.open(tmp_path / INDEX_FILE, "s2") is None and VectorIndex.open(tmp_path / INDEX_FILE, "s1", dim=8) is None  # stale


# ----------------------------------------------------------------------------- the demo


def test_the_demo_prunes_from_a_read_only_zoo_and_leaves_it_untouched(small_zoo, tmp_path, capsys, monkeypatch):
    """`metavote demo` on a published zoo (here the tiny one, marked read-only like ../shared):
    MVP and the nearest record against random and IFP at several budgets, with the FLOPs ratio."""
    from metavote.experiments import demo

    zoo, dataset, folder, _ = small_zoo
    zoo.close()
    make_read_only(zoo.root)
    before = listing(zoo.root)
    monkeypatch.setenv("METAVOTE_CACHE", str(tmp_path / "cache"))
    figures = demo(dataset=str(folder), backbone=zoo.root.parent / "backbone.safetensors", zoo=zoo.root, out=tmp_path / "demo",
                   threads=1, device="cpu", reference=(2, 4), ratio=0.5, iterations=2, batch_size=8)
    out = capsys.readouterr().out
    assert f"zoo {zoo.root} (read-only): 6 records" in out
    for method, j in (("MVP", 2), ("nearest record", 2), ("random", 2), ("IFP", 4), ("Torch-Pruning magnitude", 2), ("Torch-Pruning magnitude", 4)):
        assert f"  {method:<23} {j:>4} " in out, out
    assert "FLOPs ratio at equal accuracy" in out and "counting its neighbour search" in out and "against IFP alone" in out
    assert "upper envelope of IFP, Torch-Pruning magnitude" in out
    assert {"MVP ratio", "nearest record ratio", "MVP ratio with search", "MVP ratio against IFP"} <= set(figures)
    assert figures["MVP ratio with search"] < figures["MVP ratio"]  # the search's FLOPs count against it
    assert figures["MVP ratio"] <= figures["MVP ratio against IFP"]  # the strongest pipeline includes IFP
    assert listing(zoo.root) == before and not (tmp_path / "demo").exists()  # nothing written, no zoo built
