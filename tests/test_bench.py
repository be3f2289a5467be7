"""Baselines, the Method interface, the bench harness (rows, resume, tables) and the ablations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metavote.bench import (
    BenchContext, ablate_groups, bench, main_methods, markdown_table, one_off_costs, plot_ablation, ranked_pool, summarize, bench_tasks, write_table,
)
from metavote.cli import main
from metavote.errors import ConfigError
from metavote.methods import IFP, MVP, RandomPruning, random_subnetwork
from metavote.models import load_backbone
from metavote.profiles import get_profile, ratio_for
from metavote.pruning import target_widths
from metavote.zoo import Zoo

from conftest import tiny_ifp

# the tiny budget: r 0.5, J 2, batch 8, lr 0.01 for every method (IFP's upper bound runs 10 J = 20)
TINY_BUDGET = {"ratio": 0.5, "iterations": 2, "lr": 0.01, "batch_size": 8}
TINY = get_profile("cpu", **TINY_BUDGET)


@pytest.fixture()
def ctx(small_zoo):
    zoo, dataset, _, _ = small_zoo
    backbone, meta = load_backbone(zoo.root.parent / "backbone.safetensors")
    return BenchContext(backbone, meta.get("classes"), dataset, zoo)


def test_random_subnetwork_is_uniform_at_the_target_widths():
    from metavote.models import cifar_resnet18

    groups = cifar_resnet18(width=0.125, num_classes=4).unit_groups()
    a, b = random_subnetwork(groups, 0.75, seed=1), random_subnetwork(groups, 0.75, seed=1)
    assert a.widths() == target_widths(groups, 0.75)
    assert all(np.array_equal(a.kept[g], b.kept[g]) for g in a.kept)
    assert any(not np.array_equal(a.kept[g], random_subnetwork(groups, 0.75, seed=2).kept[g]) for g in a.kept)
    g = groups[-1]  # every unit is drawn with probability widths/size
    freq = np.zeros(g.size)
    for seed in range(400):
        freq[random_subnetwork(groups, 0.75, seed).kept[g.name]] += 1
    assert np.allclose(freq / 400, target_widths(groups, 0.75)[g.name] / g.size, atol=0.08)


def test_random_pruning_fine_tunes_a_random_subnetwork(ctx):
    data = ctx.dataset.load_task(bench_tasks(ctx.dataset, ctx.zoo, 1)[0])
    result = RandomPruning(ratio=0.5, iterations=3, batch_size=8).run(ctx.backbone, data, None, None)
    assert result.method == "random" and result.costs.iterations == 3 and result.costs.flops > 0
    assert result.subnet.widths() == target_widths(ctx.backbone.unit_groups(), 0.5)
    assert result.model.fc.out_features == data.task.n_way and 0 <= result.accuracy <= 1


def test_profiles_and_ratio_mapping():
    assert get_profile("cpu", iterations=7).iterations == 7
    assert get_profile("cpu", lr=0.5).settings("ifp")["lr"] == 0.5  # --lr sets every method's rate
    assert get_profile("paper", lr=0.5).settings("ifp")["lr"] == 0.5  # IFP's own paper rate (0.005) too
    with pytest.raises(ConfigError, match="profile"):
        get_profile("gpu")
    with pytest.raises(ConfigError, match="unknown budget"):
        get_profile("cpu", momentum=0.5)
    assert ratio_for(0.95, "cpu") == 0.9 and ratio_for(0.85, "cpu") == 0.7 and ratio_for(0.9, "cpu") == 0.8
    assert ratio_for(0.95, "paper") == 0.95


def test_main_methods_are_the_papers_comparison():
    methods = main_methods(get_profile("cpu"))
    assert [m.label for m in methods] == ["MVP (J=20)", "IFP (J=200)", "IFP (J=20)", "random (J=20)",
                                          # what users run instead, at J and 10 J
                                          "Torch-Pruning magnitude (J=20)", "Torch-Pruning magnitude (J=200)",
                                          "Torch-Pruning Taylor (J=20)", "Torch-Pruning Taylor (J=200)",
                                          "Torch-Pruning iterative (J=20)", "Torch-Pruning iterative (J=200)",
                                          "random (paper) (J=20)", "IHT-Reptile (J=20)", "MEST (J=20)", "DLTH (J=20)"]  # the paper's Table 1
    assert [m.label for m in main_methods(get_profile("cpu"), peers=False, baselines=False)] == ["MVP (J=20)", "IFP (J=200)", "IFP (J=20)",
                                                                                               "random (J=20)"]
    assert isinstance(methods[0], MVP) and isinstance(methods[3], RandomPruning)
    assert {m.ratio for m in methods} == {0.8} and {m.batch_size for m in methods} == {64}
    also = main_methods(get_profile("vit-cpu"), also=["nearest"])  # `bench --also nearest`: one more row, the profile's settings
    assert also[-1].key == "nearest" and also[-1].optimizer == "adamw" and also[-1].iterations == 20
    assert {m.optimizer for m in also if m.key.startswith("tp-")} == {"adamw"}  # a ViT's peers fine-tune as MVP does
    with pytest.raises(ConfigError, match="unknown method 'obd'"):
        main_methods(get_profile("cpu"), also=["obd"])


def test_bench_tasks_are_disjoint_from_the_zoo(ctx):
    tasks = bench_tasks(ctx.dataset, ctx.zoo, 5, seed=3)
    assert not {t.id for t in tasks} & {r.task.id for r in ctx.zoo.records()}
    assert tasks == bench_tasks(ctx.dataset, ctx.zoo, 5, seed=3)


def test_bench_runs_every_method_and_resumes(ctx, tmp_path, monkeypatch):
    """The whole Table 1 (IHT-Reptile meta-trained briefly, on the zoo's 3-way tasks) and the peers on 2 tasks, then resumed."""
    methods = main_methods(TINY, ctx.dataset)  # IHT-Reptile meta-trains 40 J = 80 inner steps
    tasks = bench_tasks(ctx.dataset, ctx.zoo, 2, n_way=3)
    rows = bench(ctx, methods, tasks, tmp_path / "bench", progress=False)
    assert len(methods) == 14 and len(rows) == 28 and {r["method"] for r in rows} == {m.label for m in methods}
    assert all(r["meta_tasks"] == 6 for r in rows if r["method"].startswith("IHT")) and len(one_off_costs(rows)) == 1
    mvp_rows = [r for r in rows if r["method"].startswith("MVP")]
    assert all(len(r["neighbours"]) == 3 and r["search_seconds"] > 0 for r in mvp_rows)
    ifp10 = next(r for r in rows if r["method"] == "IFP (J=20)" and r["task"] == tasks[0].id)
    assert ifp10["iterations"] == 20 and ifp10["tflops"] > next(r for r in mvp_rows if r["task"] == tasks[0].id)["tflops"]
    assert len((tmp_path / "bench" / "rows.jsonl").read_text().splitlines()) == 28
    peer = [r for r in rows if r["method"].startswith("Torch-Pruning") and r["task"] == tasks[0].id]
    assert len(peer) == 6 and {r["iterations"] for r in peer} == {2, 20}  # TINY's J and 10 J
    calls = []
    monkeypatch.setattr(IFP, "run", lambda *a, **k: calls.append(a))
    again = bench(ctx, methods, tasks, tmp_path / "bench", progress=False)  # everything is already there
    assert not calls and again == rows
    with pytest.raises(ConfigError, match="label"):
        bench(ctx, [IFP(**TINY_BUDGET)] * 2, tasks, progress=False)


def test_mvp_method_searches_only_the_ifp_records(ctx):
    data = ctx.dataset.load_task(bench_tasks(ctx.dataset, ctx.zoo, 1)[0])
    method = MVP(ratio=0.5, iterations=2, lr=0.01, batch_size=8, neighbours=2)
    first = method.run(ctx.backbone, data, ctx.zoo)
    ctx.zoo.add(data.task, first)  # the zoo grows; its MVP records are not voted on
    second = method.run(ctx.backbone, data, ctx.zoo)
    ifp_ids = {r.task.id for r in ctx.zoo.records(method="ifp")}
    assert set(second.params["neighbours"]) <= ifp_ids and len(ctx.zoo.records(method="mvp")) == 1
    with pytest.raises(ConfigError, match="zoo"):
        method.run(ctx.backbone, data, None)
    with pytest.raises(ConfigError, match="no records of method taylor"):
        MVP(ratio=0.5, iterations=2, lr=0.01, batch_size=8, zoo_method="taylor").run(ctx.backbone, data, ctx.zoo)


def test_summary_table_and_files(tmp_path):
    rows = [{"task": t, "method": m, "accuracy": a, "tflops": f, "seconds": s, "parameters": 10}
            for t, m, a, f, s in [("a", "MVP", 0.8, 1.0, 2.0), ("b", "MVP", 0.6, 3.0, 4.0), ("a", "IFP", 0.9, 10.0, 20.0)]]
    summary = summarize(rows)
    assert [s["method"] for s in summary] == ["MVP", "IFP"]
    assert summary[0]["accuracy_mean"] == pytest.approx(0.7) and summary[0]["accuracy_std"] == pytest.approx(0.1)
    assert summary[0]["tflops"] == pytest.approx(2.0) and summary[1]["tasks"] == 1
    table = markdown_table(summary)
    assert "| MVP | 2 | 70.00 ± 10.00 | 2.000 | 3.0 |" in table
    md, csv_path = write_table(summary, tmp_path, "title")
    assert md.read_text().startswith("title") and csv_path.read_text().splitlines()[0].startswith("method,tasks,accuracy_mean")


def test_group_ablation_takes_neighbours_from_each_group(ctx, tmp_path):
    tasks = bench_tasks(ctx.dataset, ctx.zoo, 1)
    rows = ablate_groups(ctx, tasks, TINY, similarities=("leep",), groups=3, neighbours=2, out=tmp_path / "g", progress=False)
    assert [r["method"] for r in rows] == ["leep group 1", "leep group 2", "leep group 3"]
    ranked = [r.task.id for r in ranked_pool(ctx, ctx.dataset.load_task(tasks[0]), "leep")]
    assert rows[0]["neighbours"] == ranked[:2] and rows[2]["neighbours"] == ranked[4:6]  # 6 records: groups of 2
    figure = plot_ablation(rows, tmp_path / "groups.png", "groups", "group", bars=True)
    assert figure.stat().st_size > 1000
    assert [json.loads(line)["method"] for line in (tmp_path / "g" / "rows.jsonl").read_text().splitlines()] == [r["method"] for r in rows]


def test_cli_prune_saves_to_the_zoo_and_reports_bad_input(ctx, capsys):
    zoo = ctx.zoo.root
    backbone = str(zoo.parent / "backbone.safetensors")
    data = str(zoo.parent / "data")
    task = bench_tasks(ctx.dataset, ctx.zoo, 1)[0]
    common = ["--zoo", str(zoo), "--data", data, "--backbone", backbone, "--classes", ",".join(task.classes), "--quiet"]
    tiny = ["--ratio", "0.5", "--iterations", "2", "--batch-size", "8"]
    assert main(["prune", *common, *tiny, "--neighbours", "2", "--method", "mvp"]) == 0
    out = capsys.readouterr().out
    assert "mvp on" in out and "neighbours (ann" in out and f"saved to zoo {zoo} as {task.id}.mvp" in out
    assert Zoo(zoo).get(task.id, "mvp").params["iterations"] == 2
    assert main(["prune", *common, *tiny]) == 0  # no method named: the zoo holds r = 0.5 records, so the nearest one
    out = capsys.readouterr().out
    assert "the zoo already holds this task" in out and "method: nearest (the zoo's records are pruned at r = 0.5" in out
    assert "nearest on" in out
    assert main(["prune", *common, "--ratio", "0.75", "--iterations", "2", "--batch-size", "8", "--neighbours", "2"]) == 0
    assert "method: mvp (the zoo's records are pruned at r = 0.5, not 0.75" in capsys.readouterr().out
    for bad, message in ((["--ratio", "1.5", "--iterations", "2", "--batch-size", "8"], "pruning ratio must be in (0, 1)"),
                         (["--ratio", "0.5", "--iterations", "2", "--batch-size", "500"], "fewer than one batch of 500"),
                         ([*tiny, "--neighbours", "50"], "fewer than the 50 neighbours"),
                         ([*tiny, "--method", "ifp", "--neighbours", "2"], "ifp does not use --neighbours; leave it out"),
                         # auto picks the nearest record here, which has no vote: its temperature is an error, not ignored
                         ([*tiny, "--temperature", "0"], "nearest (chosen by --method auto) does not use --temperature; leave it out, "
                                                         "or name the method that does (--method mvp)"),
                         ([*tiny, "--method", "nearest", "--temperature", "0.5"], "nearest does not use --temperature"),
                         ([*tiny, "--method", "mvp", "--temperature", "0"], "temperature must be > 0")):
        assert main(["prune", *common, *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_cli_bench_writes_the_table_and_ablate_checks_the_zoo(ctx, tmp_path, capsys):
    zoo = ctx.zoo.root
    common = ["--zoo", str(zoo), "--data", str(zoo.parent / "data"), "--backbone", str(zoo.parent / "backbone.safetensors"), "--quiet",
              "--ratio", "0.5", "--iterations", "2", "--batch-size", "8", "--tasks", "1"]
    assert main(["bench", *common, "--out", str(tmp_path / "bench")]) == 0
    out = capsys.readouterr().out
    for label in ("MVP (J=2)", "IFP (J=20)", "IFP (J=2)", "random (J=2)", "Torch-Pruning magnitude (J=2)", "Torch-Pruning magnitude (J=20)",
                  "Torch-Pruning Taylor (J=20)", "Torch-Pruning iterative (J=20)", "random (paper) (J=2)", "IHT-Reptile (J=2)", "MEST (J=2)",
                  "DLTH (J=2)"):
        assert f"| {label} | 1 |" in out
    assert "IHT-Reptile (J=2): meta-training paid once (like the zoo)" in out and "on 6 zoo tasks" in out  # 3-way tasks, 5-way head
    assert (tmp_path / "bench" / "summary.csv").exists() and len((tmp_path / "bench" / "rows.jsonl").read_text().splitlines()) == 14
    assert main(["bench", *common, "--out", str(tmp_path / "short"), "--no-peers", "--no-baselines"]) == 0
    assert "Torch-Pruning" not in capsys.readouterr().out and len((tmp_path / "short" / "rows.jsonl").read_text().splitlines()) == 4
    assert main(["ablate", "neighbours", *common, "--out", str(tmp_path / "ab")]) == 2
    assert "the zoo has 6 IFP records; the neighbours ablation needs at least 8" in capsys.readouterr().err
    assert main(["ablate", "zoos", *common, "--out", str(tmp_path / "ab")]) == 2
    assert "the zoos ablation needs --other-zoo" in capsys.readouterr().err


def test_unseen_ablation_prunes_tasks_of_a_new_dataset(ctx, tmp_path):
    from helpers import synthetic_dataset
    from metavote.bench import ablate_unseen
    from metavote.data import ImageDataset

    toy = synthetic_dataset(num_classes=4, seed=5)
    unseen = ImageDataset("unseen", [f"new_{c}" for c in toy.classes], toy.train_images, toy.train_labels, toy.test_images, toy.test_labels)
    rows = ablate_unseen(ctx, unseen, 1, TINY, out=tmp_path / "u", progress=False)
    assert [r["method"] for r in rows] == ["MVP (J=2)", "IFP (J=20)", "IFP (J=2)"]
    assert all(c.startswith("new_") for c in rows[0]["classes"]) and len(rows[0]["classes"]) == 4
    assert set(rows[0]["neighbours"]) <= {r.task.id for r in ctx.zoo.records()}
    with pytest.raises(ConfigError, match="shares classes"):
        ablate_unseen(ctx, ctx.dataset, 1, TINY, progress=False)


def test_zoos_ablation_compares_zoos_on_their_common_tasks_or_whole(ctx, small_zoo, tmp_path):
    from metavote.bench import ablate_zoos, zoo_names, zoo_summary
    from metavote.experiments import zoos_notes
    from metavote.similarity import make_similarity, nearest
    from metavote.zoo import build_zoo

    zoo, dataset, folder, tasks = small_zoo
    build_zoo(tmp_path / "taylor", tasks[:4], zoo.root.parent / "backbone.safetensors", tiny_ifp(importance="taylor"), str(folder),
              workers=1, progress=False)
    taylor = Zoo(tmp_path / "taylor")
    assert zoo_names([zoo, taylor]) == ["activation", "taylor"]
    target = bench_tasks(dataset, zoo, 1)
    both = ablate_zoos(ctx, taylor, target, TINY, out=tmp_path / "common", progress=False)
    assert [r["method"] for r in both] == ["activation zoo", "activation zoo, nearest record", "taylor zoo", "taylor zoo, nearest record"]
    rows, alone = both[::2], both[1::2]
    assert [r["zoo"] for r in rows] == ["activation", "taylor"]
    shared = {t.id for t in tasks[:4]}
    assert all(set(r["neighbours"]) <= shared and len(r["neighbours"]) == 3 for r in rows)
    assert [a["neighbours"] for a in alone] == [r["neighbours"][:1] for r in rows]  # the first of MVP's neighbours, kept whole
    whole = ablate_zoos(ctx, taylor, target, TINY, common=False, nearest_record=False, out=tmp_path / "whole", progress=False)
    data = dataset.load_task(target[0])
    assert whole[0]["neighbours"] == [r.task.id for r, _ in nearest(zoo, data, 3, make_similarity("leep"))]  # all six tasks
    assert rows[0]["neighbours"] == [r.task.id for r, _ in nearest(zoo, data, 3, make_similarity("leep"),
                                                                      records=[r for r in zoo.records() if r.task.id in shared])]
    summary = zoo_summary(both, {"activation": zoo, "taylor": taylor})
    assert summary[1]["nearest_accuracy"] == alone[1]["accuracy"]
    voters = [taylor.get(n, "ifp") for n in rows[1]["neighbours"]]
    assert summary[1]["voters"] == 3 and summary[1]["voter_accuracy"] == pytest.approx(np.mean([v.accuracy for v in voters]))
    assert summary[1]["shared"] == pytest.approx(np.mean([len(set(v.task.classes) & set(target[0].classes)) for v in voters]))
    assert summary[0]["accuracy"] == rows[0]["accuracy"]
    notes = zoos_notes(both, {"activation": zoo, "taylor": taylor}, common=True)
    assert "restricted to the tasks both hold" in notes and f"| taylor | {taylor.root} | 3 | {100 * summary[1]['voter_accuracy']:.2f} |" in notes
    with pytest.raises(ConfigError, match="itself"):
        ablate_zoos(ctx, Zoo(zoo.root), target, TINY, progress=False)


def test_ssl_rows_from_a_headless_encoder(tmp_path, tiny_setup):
    """The -SSL rows: a zoo and the main table from an encoder without a head (as SimSiam writes)."""
    import torch

    from metavote.data import sample_tasks
    from metavote.experiments import context, run_bench
    from metavote.methods import create_method
    from metavote.models import cifar_resnet18, save_weights
    from metavote.zoo import build_zoo

    dataset, folder, _ = tiny_setup
    torch.manual_seed(0)
    encoder = save_weights(tmp_path / "ssl.safetensors", cifar_resnet18(width=0.125, num_classes=0),
                           {"arch": "cifar_resnet18", "width": 0.125, "dataset": dataset.name, "method": "simsiam"})
    zoo_tasks = sample_tasks(dataset, 3, 4, seed=0)
    params = {"ratio": 0.5, "iterations": 2, "lr": 0.01, "batch_size": 8, "importance_batches": 1}
    report = build_zoo(tmp_path / "zoo", zoo_tasks, encoder, create_method("ifp", **params), str(folder), workers=1, progress=False)
    assert len(report.done) == 4 and not report.failed
    ctx = context(tmp_path / "zoo", folder, encoder, "cpu")
    assert ctx.classes is None and ctx.head_rows(zoo_tasks[0]) is None  # no pre-trained head: every head is made for the task
    rows, table = run_bench(ctx, "cpu", 2, out=tmp_path / "bench", progress=False, peers=False, **TINY_BUDGET)
    assert len(rows) == 16 and all(0 <= r["accuracy"] <= 1 for r in rows)  # the 8 rows of Table 1 on 2 tasks
    target = dataset.load_task(next(t for t in sample_tasks(dataset, 3, 10, seed=5) if t not in zoo_tasks))
    result = MVP(ratio=0.5, iterations=2, lr=0.01, batch_size=8).run(ctx.backbone, target, ctx.zoo, ctx.head_rows(target.task))
    assert result.params["head"] in ("neighbours", "imprint") and result.model.fc.out_features == 3


def test_flops_ratio_interpolates_in_log_flops():
    from metavote.bench import flops_ratio

    def row(family, x, tflops, accuracy, search=0.0):
        return {"task": "t", "family": family, "x": x, "tflops": tflops, "accuracy": accuracy, "search_tflops": search}

    rows = [row("IFP", 10, 1.0, 0.5), row("IFP", 100, 10.0, 0.7), row("IFP", 50, 5.0, 0.4), row("IFP", 1000, 100.0, 0.9),
            row("MVP", 1, 0.1, 0.8, search=0.1), row("MVP", 2, 0.2, 0.95), row("MVP", 3, 0.3, 0.3)]
    mid, above, below = flops_ratio(rows)
    assert mid["bound"] == "=" and mid["reference_tflops"] == pytest.approx(10 ** 1.5) and mid["ratio"] == pytest.approx(10 ** 2.5)
    assert mid["reference_iterations"] == pytest.approx(10 ** 2.5)  # between 100 and 1000 iterations, halfway in log
    assert above["bound"] == ">" and above["ratio"] == pytest.approx(500)  # never reached: at least the largest budget's ratio
    assert below["bound"] == "<" and below["ratio"] == pytest.approx(1 / 0.3)
    # the reference's dip at 5 TFLOPs (0.4) does not count against it: interpolated between 1 and 10 TFLOPs
    assert flops_ratio([*rows[:4], row("MVP", 1, 0.1, 0.6)])[0]["reference_tflops"] == pytest.approx(10 ** 0.5)
    assert flops_ratio(rows, search=True)[0]["ratio"] == pytest.approx(10 ** 2.5 / 2)  # the search's FLOPs added to MVP's
    # against several pipelines: their points pooled, the upper envelope (a peer that reaches 0.7 at 1 TFLOP beats IFP's 10,
    # so MVP's 0.8 lies halfway in log between 0.7 at 1 and IFP's 0.9 at 100 TFLOPs)
    peer = [row("Torch-Pruning magnitude", 10, 0.1, 0.6), row("Torch-Pruning magnitude", 100, 1.0, 0.7)]
    envelope = flops_ratio([*rows, *peer], "MVP", ["IFP", "Torch-Pruning magnitude"])[0]
    assert envelope["reference_tflops"] == pytest.approx(10) and envelope["ratio"] == pytest.approx(100)


def test_the_bench_states_the_ratio_against_the_strongest_pipeline_then_against_ifp():
    from metavote.bench import ratio_notes

    def row(family, x, tflops, accuracy):
        return {"task": "t", "family": family, "x": x, "tflops": tflops, "accuracy": accuracy, "search_tflops": 0.0}

    rows = [row("IFP", 20, 1.0, 0.5), row("IFP", 200, 100.0, 0.9), row("Torch-Pruning Taylor", 20, 0.1, 0.5),
            row("Torch-Pruning Taylor", 200, 1.0, 0.9), row("MVP", 20, 0.1, 0.7), row("random", 20, 0.1, 0.4)]
    line, = ratio_notes(rows)
    assert line.startswith("MVP (J=20, 70.00%): 3.2x fewer training FLOPs than the strongest conventional pipeline") and "100.0x against IFP alone" in line
    without_ifp, = ratio_notes([r for r in rows if r["family"] != "IFP"])  # Torch-Pruning alone: its ratio, no IFP clause
    assert without_ifp.startswith("MVP (J=20, 70.00%): 3.2x fewer") and "(Torch-Pruning at J and 10 J" in without_ifp and "IFP" not in without_ifp
    assert ratio_notes([r for r in rows if r["family"] in ("MVP", "random")]) == []
    assert ratio_notes([r for r in rows if not r["family"].startswith("Torch")]) == [
        "MVP (J=20, 70.00%): 100.0x fewer training FLOPs than IFP at equal accuracy (interpolated)"]
    vit = [{**r, "family": "AHNP"} if r["family"] == "IFP" else r for r in rows]  # a ViT table: AHNP is the paper's pipeline, pooled the same way
    line, = ratio_notes(vit)
    assert "(AHNP and Torch-Pruning at J and 10 J" in line and "100.0x against AHNP alone" in line


def test_budget_and_diagnostic_ablations(ctx, tmp_path):
    from metavote.bench import ablate_budget, ablate_decomposition, ablate_head, ablate_recipe, neighbour_overlap, plot_budget
    from metavote.experiments import budget_notes

    tasks = bench_tasks(ctx.dataset, ctx.zoo, 1)
    rows = ablate_budget(ctx, tasks, TINY, mvp_iterations=(1, 2), conventional_iterations=(2, 4), searches=("preselect", "leep-10"),
                         mvp_variants={"MVP (freeze 0.5)": {"freeze": 0.5}, "half": {"batch_size": TINY.batch_size // 2, "neighbours": 2}},
                         others={"nearest": (1,), "tp-magnitude": (2, 4)}, out=tmp_path / "b", progress=False)  # no WordNet: no synsets
    assert [r["method"] for r in rows] == ["IFP J=2", "IFP J=4", "MVP J=1", "random J=1", "MVP J=2", "random J=2", "MVP (freeze 0.5) J=1",
                                           "MVP (freeze 0.5) J=2", "half J=1", "half J=2", "MVP (preselect) J=2", "MVP (leep-10) J=2",
                                           "nearest record J=1", "Torch-Pruning magnitude J=2", "Torch-Pruning magnitude J=4"]
    by = {r["method"]: r for r in rows}
    assert by["MVP (freeze 0.5) J=2"]["neighbours"] == by["MVP J=2"]["neighbours"]
    assert by["half J=2"]["neighbours"] == by["MVP J=2"]["neighbours"][:2]  # the first two of the same ranking
    assert by["half J=2"]["iterations"] == 2 * by["MVP J=2"]["iterations"] == 4  # half the batch, the same images
    assert by["MVP (freeze 0.5) J=2"]["tflops"] < by["MVP J=2"]["tflops"]  # the frozen blocks' backward is not run
    assert 0 < by["MVP (leep-10) J=2"]["search_tflops"] < by["MVP J=2"]["search_tflops"]  # 10 images per class, not 50
    mvp = [r for r in rows if r["family"] == "MVP"]
    assert mvp[0]["search_tflops"] > 0 and mvp[0]["search_tflops"] == mvp[1]["search_tflops"] and mvp[0]["neighbours"] == mvp[1]["neighbours"]
    assert all(r["search_tflops"] == 0 for r in rows if r["family"] in ("IFP", "random"))
    notes = budget_notes(rows)
    assert "| MVP J=1 |" in notes and "| MVP (preselect) J=2 |" in notes and "| nearest record J=1 |" in notes and "ratio with search" in notes
    assert "the strongest of IFP, Torch-Pruning magnitude" in notes and "ratio against IFP alone" in notes
    assert "ratio against IFP alone" not in budget_notes([r for r in rows if not r["family"].startswith("Torch")])
    assert plot_budget(rows, tmp_path / "budget.png", "budget").stat().st_size > 1000

    rows = ablate_decomposition(ctx, tasks, TINY, iterations=(0, 2), out=tmp_path / "d", progress=False)
    assert len(rows) == 10 and [r["iterations"] for r in rows] == [0] * 5 + [2] * 5
    nearest = [r for r in rows if r["method"].startswith("nearest")]
    assert all(len(r["neighbours"]) == 1 and r["neighbours"][0] == rows[0]["neighbours"][0] for r in nearest)
    rows = ablate_head(ctx, tasks, TINY, head_steps=(0, 2), out=tmp_path / "h", progress=False)
    assert [r["method"] for r in rows][-3:] == ["pre-trained rows, 2 head steps", "neighbours' rows, 2 head steps", "imprinted, 2 head steps"]
    rows = ablate_recipe(ctx, tasks, TINY, lr_factors=(1, 2), batch_factors=(1, 2), out=tmp_path / "r", progress=False)
    assert [r["method"] for r in rows] == ["J=2 batch 8 lr 0.01", "J=2 batch 8 lr 0.02", "J=4 batch 4 lr 0.01", "J=4 batch 4 lr 0.02"]
    overlap = neighbour_overlap(rows, ctx.zoo)
    assert len(overlap) == 4 and all(0 <= o["shared"] <= o["shared_max"] <= 3 for o in overlap)
