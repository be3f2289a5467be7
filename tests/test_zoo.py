"""The zoo store (round trip, refusals, damaged records, atomicity, concurrent writers) and its builder."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from metavote.data import Task, sample_tasks
from metavote.errors import ConfigError
from metavote.methods import PruneResult
from metavote.models import cifar_resnet18, load_backbone, replace_head
from metavote.pruning import SubNetwork, TensorIndex, dense_view, extract
from metavote.training import Costs
from metavote.zoo import Zoo, ZooError, build_zoo

from conftest import tiny_ifp

REPO = Path(__file__).resolve().parents[1]


def backbone_meta(fingerprint: str = "f" * 64) -> dict:
    return {"fingerprint": fingerprint, "arch": "cifar_resnet18", "width": 0.125,
            "config": {"arch": "cifar_resnet18", "width": 0.125}, "dataset": "synthetic"}


def fake_result(backbone, n_way: int = 3, seed: int = 0) -> PruneResult:
    """A pruning result without training: a random sub-network of the backbone with a task head."""
    rng = np.random.default_rng(seed)
    groups = backbone.unit_groups()
    subnet = SubNetwork({g.name: rng.choice(g.size, max(1, g.size // 3), replace=False) for g in groups}, {g.name: g.size for g in groups})
    model = extract(backbone, subnet)
    replace_head(model, n_way)
    return PruneResult(model.eval(), subnet, Costs(flops=10**9, seconds=1.5), 0.5 + seed / 100, "ifp", {"ratio": 0.66})


def task(i: int) -> Task:
    return Task("synthetic", (f"c{i}", f"c{i + 1}", f"c{i + 2}"))


@pytest.fixture()
def backbone():
    torch.manual_seed(0)
    return cifar_resnet18(width=0.125, num_classes=6).eval()


def test_round_trip(tmp_path, backbone):
    result = fake_result(backbone)
    with Zoo(tmp_path / "zoo", backbone_meta()) as zoo:
        record = zoo.add(task(0), result)
        zoo.add(task(5), fake_result(backbone, seed=1))
        assert len(zoo) == 2 and [r.task.id for r in zoo] == [task(0).id, task(5).id]
        got = zoo.get(task(0).id)
        assert got == record and got.accuracy == pytest.approx(0.5) and got.params == {"ratio": 0.66}
        model, subnet = zoo.load(got)
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(model(x), result.model(x))
        assert all(np.array_equal(subnet.kept[k], result.subnet.kept[k]) for k in subnet.kept)
        expected = dense_view(backbone.state_dict(), result.subnet, result.model.state_dict(),
                              TensorIndex(backbone, backbone.unit_groups()), skip=backbone.classifier_keys())
        dense = zoo.dense(got, backbone)
        assert dense.keys() == expected.keys() and all(torch.equal(dense[k], expected[k]) for k in dense)
        assert zoo.records(method="mvp") == [] and len(zoo.records(method="ifp")) == 2
    with Zoo(tmp_path / "zoo") as reopened:  # opening without a backbone reads it as it is
        assert len(reopened) == 2 and reopened.fingerprint == "f" * 64


def test_a_zoo_built_again_in_the_same_folder_does_not_find_the_old_ones_cache(tmp_path, monkeypatch):
    """A read-only zoo's derived files (the search's index) live in the user's cache, keyed by folder and the zoo's own
    id: a zoo rebuilt in the old one's folder with as many records (the same version count) got its stale index."""
    import shutil

    monkeypatch.setenv("METAVOTE_CACHE", str(tmp_path / "cache"))
    Zoo(tmp_path / "zoo", backbone_meta()).close()
    with Zoo(tmp_path / "zoo", read_only=True) as zoo:
        first, again, version = zoo.cache_dir, Zoo(tmp_path / "zoo", read_only=True).cache_dir, zoo.version()
    assert first == again and first.is_relative_to(tmp_path / "cache")
    shutil.rmtree(tmp_path / "zoo")
    Zoo(tmp_path / "zoo", backbone_meta()).close()
    with Zoo(tmp_path / "zoo", read_only=True) as rebuilt:
        assert rebuilt.cache_dir != first and rebuilt.version() == version


def test_refuses_another_backbone_and_non_zoos(tmp_path, backbone):
    Zoo(tmp_path / "zoo", backbone_meta()).close()
    with pytest.raises(ZooError, match="built from backbone"):
        Zoo(tmp_path / "zoo", backbone_meta("0" * 64))
    with pytest.raises(ZooError, match="not a zoo"):
        Zoo(tmp_path / "nothing-here")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    with pytest.raises(ZooError, match="not a zoo"):
        Zoo(other, backbone_meta())
    (other / "index.sqlite").write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(ZooError, match="not a readable zoo index"):
        Zoo(other)


def test_missing_or_damaged_record_files(tmp_path, backbone):
    with Zoo(tmp_path / "zoo", backbone_meta()) as zoo:
        a = zoo.add(task(0), fake_result(backbone))
        b = zoo.add(task(5), fake_result(backbone, seed=1))
        (zoo.root / "records" / a.file).unlink()
        with pytest.raises(ZooError, match="missing"):
            zoo.load(a)
        with open(zoo.root / "records" / b.file, "ab") as f:
            f.write(b"\0")
        with pytest.raises(ZooError, match="checksum"):
            zoo.load(b)
        assert not zoo.verify(a) and not zoo.verify(b)


def test_crash_while_writing_leaves_the_zoo_intact(tmp_path, backbone, monkeypatch):
    import metavote.zoo.store as zoo_module

    with Zoo(tmp_path / "zoo", backbone_meta()) as zoo:
        zoo.add(task(0), fake_result(backbone))

        def crash(tensors, path, metadata=None):
            Path(path).write_bytes(b"half a file")
            raise OSError("disk full")

        monkeypatch.setattr(zoo_module, "save_file", crash)
        with pytest.raises(OSError):
            zoo.add(task(5), fake_result(backbone, seed=1))
        assert [r.task.id for r in zoo] == [task(0).id]
        assert sorted(p.name for p in (zoo.root / "records").iterdir()) == [f"{task(0).id}.ifp.safetensors"]
        zoo.load(zoo.get(task(0).id))


def _writer(root: str, start: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    backbone = cifar_resnet18(width=0.125, num_classes=6).eval()
    with Zoo(root, backbone_meta()) as zoo:
        for i in range(start, start + 4):
            zoo.add(task(i * 10), fake_result(backbone, seed=i))


def test_concurrent_writers(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "zoo"), s)) for s in (0, 4, 8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with Zoo(tmp_path / "zoo") as zoo:
        records = zoo.records()
        assert len(records) == 12 and all(zoo.verify(r) for r in records)


def _user(layer: str, base: str, data: str, tasks: list[list[str]]) -> None:
    """A user's process: `prune --method auto --save-to layer` on the read-only base zoo, task after task; a task whose
    record the layer already holds is skipped, so a killed user resumes by running again."""
    torch.set_num_threads(1)
    from metavote.experiments import context, prune, with_layer

    ctx = with_layer(context(base, dataset=data, backbone=str(Path(base).parent / "backbone.safetensors"), read_only=True), layer)
    for classes in tasks:
        if not ctx.zoo.find(ctx.dataset.task(classes).id):
            prune(ctx, classes, "auto", ratio=0.5, iterations=2, batch_size=8, progress=False)


def _refiner(layer: str) -> None:
    """`zoo refine` over and over, as a deployment runs it between arrivals, until killed."""
    torch.set_num_threads(1)
    from metavote.zoo import refine_zoo

    while True:
        refine_zoo(layer, below=60, progress=False)
        time.sleep(0.05)


def _wait(condition, seconds: float = 60.0) -> None:
    end = time.time() + seconds
    while not condition():
        assert time.time() < end, "timed out"
        time.sleep(0.05)


def test_users_and_a_refiner_share_a_layer_readers_never_wait_and_a_kill_loses_nothing(small_zoo, tmp_path):
    """Issue 38: two users prune and save into one layer while `zoo refine` trains its records; a reader is never held by
    a writer's transaction; a user and a refiner killed with SIGKILL in the middle of their work leave a layer that opens,
    whose every record is whole, and that their next runs complete."""
    import sqlite3

    from metavote.bench import bench_tasks
    from metavote.zoo import record_budget

    zoo, dataset, folder, _ = small_zoo
    base, layer = str(zoo.root), str(tmp_path / "layer")
    tasks = [list(t.classes) for t in bench_tasks(dataset, zoo, 12, n_way=3, seed=3)]
    with Zoo(base, read_only=True) as b:
        Zoo.layer(b, layer).close()
    zoo.close()
    spawn = multiprocessing.get_context("spawn")
    users = [spawn.Process(target=_user, args=(layer, base, str(folder), tasks[i:i + 4])) for i in (0, 4)]
    refiner = spawn.Process(target=_refiner, args=(layer,))
    for p in (*users, refiner):
        p.start()

    def own():
        with Zoo(layer, read_only=True) as z:
            return [r for r in z.records() if r.origin == z.root]

    _wait(lambda: len(own()) >= 1)
    with sqlite3.connect(Path(layer) / "index.sqlite", isolation_level=None) as held:  # a writer's transaction held open
        held.execute("BEGIN IMMEDIATE")
        start = time.perf_counter()
        with Zoo(layer, read_only=True) as z:
            seen = len(z.records())
            z.load(z.records()[0])
        waited = time.perf_counter() - start
        held.execute("ROLLBACK")
    assert seen >= 7 and waited < 10  # the zoo's busy timeout is 60 s: a reader that waited for the writer would take that
    with Zoo(layer, read_only=True) as z:  # kill the refiner while it holds a record, the users still saving
        _wait(lambda: any(c.record_id.endswith("#refine") for c in z.claims()))
    os.kill(refiner.pid, signal.SIGKILL)
    refiner.join(30)
    for p in users:
        p.join(180)
        assert p.exitcode == 0
    late = spawn.Process(target=_user, args=(layer, base, str(folder), tasks[8:]))  # a user killed after its first record
    late.start()
    _wait(lambda: any(r.task.classes == tuple(tasks[8]) for r in own()))
    os.kill(late.pid, signal.SIGKILL)
    late.join(30)

    with Zoo(layer) as z:
        assert all(z.verify(r) for r in z.records())  # every record whole: no half-written file is ever a record
        have = len(own())
    assert have >= 9  # the first users' 8 and the late user's first
    _user(layer, base, str(folder), tasks[8:])  # both run again: the user saves the rest once, the refiner takes over its record
    from metavote.zoo import refine_zoo

    refine_zoo(layer, below=60, progress=False)
    records = own()
    assert sorted(r.task.id for r in records) == sorted(dataset.task(t).id for t in tasks)  # each task once: none lost, none twice
    assert all(record_budget(r) == 60 for r in records)
    with Zoo(layer) as z:
        assert all(z.verify(r) for r in z.records()) and not z.claims(live=True)


def test_build_resumes_and_records_failures(tmp_path, tiny_setup):
    dataset, folder, weights = tiny_setup
    tasks = sample_tasks(dataset, 3, 3, seed=0)
    report = build_zoo(tmp_path / "zoo", tasks[:2], weights, tiny_ifp(), str(folder), workers=1, progress=False)
    assert len(report.done) == 2 and not report.failed
    report = build_zoo(tmp_path / "zoo", tasks, weights, tiny_ifp(), str(folder), workers=1, progress=False)
    assert len(report.skipped) == 2 and len(report.done) == 1
    bad = sample_tasks(dataset, 3, 1, seed=7, exclude=tasks)
    # a ratio outside (0, 1) is now refused when the method is created, before any task runs; a ratio that
    # prunes a group of the tiny backbone to zero (8 channels * 0.03 rounds to 0) still fails inside the task
    with pytest.raises(ConfigError, match="ratio"):
        tiny_ifp(ratio=1.5)
    report = build_zoo(tmp_path / "zoo", bad, weights, tiny_ifp(ratio=0.97), str(folder), workers=1, progress=False)
    assert list(report.failed.values())[0].startswith("ConfigError") and "ratio" in list(report.failed.values())[0]
    with Zoo(tmp_path / "zoo") as zoo:
        assert len(zoo) == 3
        failed = zoo.records(status="failed")
        assert len(failed) == 1 and failed[0].task == bad[0] and "ratio" in failed[0].error
        _, meta = load_backbone(weights)
        assert zoo.fingerprint == meta["fingerprint"]
    # a failed task is left alone by the next build, and retried when asked
    report = build_zoo(tmp_path / "zoo", bad, weights, tiny_ifp(), str(folder), workers=1, progress=False)
    assert report.failed_before == [f"{bad[0].id}.ifp"] and not report.done
    report = build_zoo(tmp_path / "zoo", bad, weights, tiny_ifp(), str(folder), workers=1, progress=False, retry_failed=True)
    assert report.done == [f"{bad[0].id}.ifp"] and not report.failed
    with Zoo(tmp_path / "zoo") as zoo:
        assert len(zoo) == 4 and not zoo.records(status="failed") and not zoo.claims(live=False)


def test_cli_zoo_build_takes_any_registered_method(tmp_path, tiny_setup, capsys):
    from metavote.cli import main

    dataset, folder, weights = tiny_setup
    domain = dataset.classes[:4]
    common = ["zoo", "build", "--zoo", str(tmp_path / "zoo"), "--dataset", str(folder), "--backbone", str(weights), "--tasks", "2",
              "--n-way", "3", "--ratio", "0.5", "--iterations", "2", "--batch-size", "8", "--workers", "1", "--quiet",
              "--classes", ",".join(domain)]
    assert main([*common, "--method", "random"]) == 0
    assert "random {'ratio': 0.5, 'iterations': 2" in capsys.readouterr().out
    with Zoo(tmp_path / "zoo") as zoo:
        assert [r.method for r in zoo.records()] == ["random", "random"] and zoo.records()[0].record_id.endswith(".random")
        assert all(set(r.task.classes) <= set(domain) for r in zoo.records())  # tasks from --classes only
    assert main([*common, "--method", "random", "--importance", "taylor"]) == 2  # a setting of IFP only
    assert "random has no setting(s) importance" in capsys.readouterr().err
    assert main(["zoo", "ls", "--zoo", str(tmp_path / "zoo")]) == 0
    assert "backbone cifar_resnet18 w0.125 (" in capsys.readouterr().out


def test_build_with_two_worker_processes(tmp_path, tiny_setup):
    dataset, folder, weights = tiny_setup
    tasks = sample_tasks(dataset, 3, 2, seed=1)
    report = build_zoo(tmp_path / "zoo", tasks, weights, tiny_ifp(), str(folder), workers=2, progress=False)
    assert sorted(report.done) == sorted(f"{t.id}.ifp" for t in tasks)
    with Zoo(tmp_path / "zoo") as zoo:
        assert all(zoo.verify(r) for r in zoo.records())


def test_build_with_ray(tmp_path, tiny_setup):
    pytest.importorskip("ray", reason="the Ray executor is an optional extra")
    dataset, folder, weights = tiny_setup
    tasks = sample_tasks(dataset, 3, 2, seed=2)
    report = build_zoo(tmp_path / "zoo", tasks, weights, tiny_ifp(), str(folder), workers=2, executor="ray", progress=False)
    assert len(report.done) == 2, report.failed


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_of_a_killed_build_exit(tmp_path, tiny_setup):
    """SIGKILL the parent of a 2-worker build: its workers exit within 10 s instead of finishing the queue."""
    dataset, folder, weights = tiny_setup
    cmd = [sys.executable, "-m", "metavote.cli", "zoo", "build", "--zoo", str(tmp_path / "zoo"), "--dataset", str(folder),
           "--backbone", str(weights), "--tasks", "6", "--n-way", "3", "--ratio", "0.5", "--iterations", "400",
           "--batch-size", "8", "--workers", "2", "--threads", "1", "--device", "cpu", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, workers = time.time() + 60, []
        while time.time() < deadline and len(workers) < 2:
            if proc.poll() is not None:
                pytest.fail(f"build ended before it could be killed: {proc.stderr.read().decode()}")
            workers = [p for p in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
            time.sleep(0.2)
        assert len(workers) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:  # do not leak them into the rest of the suite
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent"


def test_threads_follow_the_cores_this_process_may_use(tmp_path, tiny_setup, monkeypatch):
    import metavote.training as training
    import metavote.zoo.build as build

    dataset, folder, weights = tiny_setup
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert training.available_cores() == 3
    seen = []

    class NotingPool(build._Serial):  # stands in for the pool: notes each job's threads, trains nothing
        def __init__(self, workers):
            super().__init__()

        def next(self, timeout=None):
            job = self._jobs.pop(0)
            seen.append(job.threads)
            return job, build.JobResult(build.record_id(Task.from_dict(job.task), job.method.key), None, 0.0)

    monkeypatch.setattr(build, "_Pool", NotingPool)
    tasks = sample_tasks(dataset, 3, 2, seed=1)
    build_zoo(tmp_path / "zoo", tasks, weights, tiny_ifp(), str(folder), workers=2, progress=False)
    assert seen == [1, 1]  # 3 cores among 2 workers: 1 thread each, never 2 x 2
    with pytest.raises(ConfigError, match="oversubscribe"):
        build_zoo(tmp_path / "zoo", tasks, weights, tiny_ifp(), str(folder), workers=2, threads=2, progress=False)


def test_killed_build_resumes(tmp_path, tiny_setup):
    """SIGKILL a CLI build after its first record lands; the re-run keeps it and does the rest."""
    dataset, folder, weights = tiny_setup
    zoo_dir = tmp_path / "zoo"
    cmd = [sys.executable, "-m", "metavote.cli", "zoo", "build", "--zoo", str(zoo_dir), "--dataset", str(folder),
           "--backbone", str(weights), "--tasks", "5", "--n-way", "3", "--ratio", "0.5", "--iterations", "30",
           "--batch-size", "8", "--workers", "1", "--quiet"]
    env = os.environ | {"METAVOTE_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if (zoo_dir / "index.sqlite").exists():
                with Zoo(zoo_dir) as zoo:
                    if len(zoo) >= 1:
                        break
            if proc.poll() is not None:
                pytest.fail(f"build ended before it could be killed: {proc.stderr.read().decode()}")
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Zoo(zoo_dir) as zoo:
        kept = len(zoo)
        assert 1 <= kept < 5 and all(zoo.verify(r) for r in zoo.records())
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"skipped {kept} already done" in result.stdout
    with Zoo(zoo_dir) as zoo:
        assert len(zoo) == 5


def test_claims_are_exclusive_and_expire(tmp_path, backbone):
    with Zoo(tmp_path / "zoo", backbone_meta()) as zoo, Zoo(tmp_path / "zoo") as other:
        assert zoo.claim("a.ifp", "me", lease=60) == "claimed"
        assert other.claim("a.ifp", "you", lease=60) == "busy"  # a live claim of another builder
        assert zoo.claim("a.ifp", "me", lease=60) == "claimed" and zoo.holds("a.ifp", "me") and not zoo.holds("a.ifp", "you")
        assert [c.record_id for c in other.claims()] == ["a.ifp"] and other.claims()[0].pid == os.getpid()
        assert zoo.heartbeat("me", lease=0.05) == 1  # the lease now runs out at once: the owner stopped beating
        time.sleep(0.1)
        assert not zoo.holds("a.ifp", "me") and other.claims() == []
        assert other.claim("a.ifp", "you", lease=60) == "claimed" and other.holds("a.ifp", "you")
        # finished and failed records are not claimed; a failure is retried only when asked
        zoo.add(task(0), fake_result(backbone))
        assert zoo.claim(f"{task(0).id}.ifp", "me", lease=60) == "done"
        zoo.add_failure(task(1), "ifp", {}, "boom")
        assert zoo.claim(f"{task(1).id}.ifp", "me", lease=60) == "failed"
        assert zoo.claim(f"{task(1).id}.ifp", "me", lease=60, retry_failed_before=time.time() + 1) == "claimed"
        zoo.release("me")
        assert [c.owner for c in zoo.claims(live=False)] == ["you"]


def test_claim_of_a_dead_process_is_taken_over_at_once(tmp_path, monkeypatch):
    """A claim's owner that ran on this host and is gone frees the task before its lease ends; one
    on another host holds it until the lease runs out."""
    Zoo(tmp_path / "zoo", backbone_meta()).close()
    code = f"from metavote.zoo import Zoo; print(Zoo({str(tmp_path / 'zoo')!r}).claim('a.ifp', 'gone', lease=3600))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "claimed", done.stderr
    with Zoo(tmp_path / "zoo") as zoo:
        assert zoo.claims() == [] and len(zoo.claims(live=False)) == 1
        assert zoo.claim("a.ifp", "me", lease=3600) == "claimed"
        import metavote.zoo.store as store

        monkeypatch.setattr(store.socket, "gethostname", lambda: "elsewhere")
        assert zoo.claim("b.ifp", "remote", lease=3600) == "claimed"
        monkeypatch.undo()
        assert zoo.claim("b.ifp", "me", lease=3600) == "busy"  # its pid means nothing here: wait for the lease


def _build_cmd(zoo_dir, folder, weights, tasks: int, iterations: int) -> list[str]:
    return [sys.executable, "-m", "metavote.cli", "zoo", "build", "--zoo", str(zoo_dir), "--dataset", str(folder), "--backbone",
            str(weights), "--tasks", str(tasks), "--n-way", "3", "--ratio", "0.5", "--iterations", str(iterations), "--batch-size", "8",
            "--workers", "1", "--threads", "1", "--device", "cpu", "--quiet"]


def test_two_builders_share_the_work(tmp_path, tiny_setup):
    """Two builders started together on one zoo train every task exactly once between them."""
    _, folder, weights = tiny_setup
    cmd = _build_cmd(tmp_path / "zoo", folder, weights, tasks=6, iterations=60)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    built = [int(out.split("built ")[1].split(",")[0]) for out, _ in outs]
    assert sum(built) == 6, outs  # no task trained twice, none left out
    with Zoo(tmp_path / "zoo") as zoo:
        assert len(zoo) == 6 and all(zoo.verify(r) for r in zoo.records()) and zoo.claims(live=False) == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_tasks_of_a_killed_builder_are_taken_over(tmp_path, tiny_setup, capsys):
    """kill -9 a builder in the middle of a task: `zoo ls --status running` showed its claim, and the
    next builder takes the task over at once and finishes the zoo, with no partial record."""
    from metavote.cli import main

    _, folder, weights = tiny_setup
    zoo_dir = tmp_path / "zoo"
    proc = subprocess.Popen(_build_cmd(zoo_dir, folder, weights, tasks=2, iterations=5000), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if (zoo_dir / "index.sqlite").exists():
                with Zoo(zoo_dir) as zoo:
                    if zoo.claims():
                        break
            if proc.poll() is not None:
                pytest.fail(f"build ended before it could be killed: {proc.stderr.read().decode()}")
            time.sleep(0.2)
        assert main(["zoo", "ls", "--zoo", str(zoo_dir), "--status", "running"]) == 0
        out = capsys.readouterr().out
        assert "1 task(s) being built" in out and f" {proc.pid} " in out
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Zoo(zoo_dir) as zoo:
        assert len(zoo) == 0 and zoo.claims() == [] and len(zoo.claims(live=False)) == 1
    start = time.time()
    result = subprocess.run(_build_cmd(zoo_dir, folder, weights, tasks=2, iterations=5), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "built 2, skipped 0" in result.stdout and time.time() - start < 60  # not held back by the dead claim's lease
    with Zoo(zoo_dir) as zoo:
        assert len(zoo) == 2 and all(zoo.verify(r) for r in zoo.records()) and zoo.claims(live=False) == []


def test_refine_trains_weak_records_up_to_the_zoo_budget_and_swaps_them_safely(small_zoo, capsys, tmp_path):
    from metavote.cli import main
    from metavote.methods import create_method
    from metavote.models import head_rows_for
    from metavote.zoo import record_budget, refine_zoo, weak_records, zoo_budget

    zoo, dataset, folder, tasks = small_zoo
    backbone, meta = load_backbone(zoo.root.parent / "backbone.safetensors", dataset=dataset)
    new = dataset.task(dataset.classes[3:6])
    weak = create_method("random", ratio=0.5, iterations=1, batch_size=8).run(backbone, dataset.load_task(new), None,
                                                                               head_rows_for(meta["classes"], new.classes))
    added = zoo.add(new, weak)
    assert zoo_budget(zoo) == 4 and [r.record_id for r in weak_records(zoo)] == [added.record_id]  # the IFP records had 4 steps
    stale = zoo.find(added.record_id)[0]
    zoo.close()

    with Zoo(zoo.root) as other:  # another refiner holds the record: left alone
        assert other.claim(f"{added.record_id}#refine", "someone", lease=60) == "claimed"
        assert refine_zoo(zoo.root, progress=False).busy == [added.record_id]
        other.release("someone")
    report = refine_zoo(zoo.root, progress=False)
    assert [r["record"] for r in report.refined] == [added.record_id] and report.refined[0]["steps"] == 3
    with Zoo(zoo.root) as z:
        r = z.get(added.record_id)
        assert record_budget(r) == 4 and r.params["refined"] == 3 and r.params["accuracy_before_refine"] == added.accuracy
        assert r.accuracy == report.refined[0]["after"] and r.flops > added.flops and r.file != added.file
        model, subnet = z.load(r)  # the new file matches its checksum; Omega is the record's own
        assert all(np.array_equal(subnet.kept[k], weak.subnet.kept[k]) for k in subnet.kept)
        assert z.verify(stale) is True  # a reader holding the old row still finds the old file ...
        assert z.update_model(stale, model, r.params, 0.0, 0.0, 0.0) is None  # ... and an outdated row is never written over
        assert z.clean_superseded(grace=3600) == 0 and z.clean_superseded(grace=0) == 1 and not z.verify(stale)
        assert weak_records(z) == [] and len(list((z.root / "records").iterdir())) == len(z.records())
    assert main(["zoo", "refine", "--zoo", str(zoo.root), "--quiet"]) == 0
    assert "0 record(s) trained for fewer than 4 steps" in capsys.readouterr().out
    from metavote.zoo import pack_zoo, unpack_zoo

    unpack_zoo(pack_zoo(zoo.root, tmp_path / "zoo.tar"), tmp_path / "copy")  # a refined record ships like any other
    with Zoo(tmp_path / "copy") as copy:
        assert copy.get(added.record_id).params["refined"] == 3 and copy.verify(copy.get(added.record_id))
