"""The paper's CNN baselines: MEST, DLTH and IHT-based Reptile (budgets, ratios, FLOPs, no test task in meta-training)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from metavote.bench import bench_tasks
from metavote.errors import ConfigError
from metavote.methods import UnitMask, create_method, magnitude_subnetwork, random_subnetwork
from metavote.models import cifar_resnet18, create_model, load_backbone
from metavote.pruning import extract, target_widths, unit_norms
from metavote.training import Costs, recalibrate_bn

BUDGET = {"ratio": 0.5, "iterations": 10, "lr": 0.01, "batch_size": 8}


@pytest.fixture()
def cnn_task(small_zoo):
    zoo, dataset, _, _ = small_zoo
    backbone, meta = load_backbone(zoo.root.parent / "backbone.safetensors", dataset=dataset)
    task = bench_tasks(dataset, zoo, 1, n_way=3)[0]
    return backbone, dataset, dataset.load_task(task), zoo, meta


def dense_costs(backbone, n_way: int, steps: int, batch: int) -> int:
    costs = Costs()
    costs.add_steps(create_model(backbone.config, n_way), steps, batch)
    return costs.flops


def refresh_costs(model, batches: int = 5, batch: int = 8) -> int:
    """The FLOPs of ``Method.run``'s BatchNorm re-estimation after the last step (forward passes)."""
    costs = Costs()
    costs.add_steps(model, batches, batch, backward=False, training=False)
    return costs.flops


def test_a_regrown_unit_changes_nothing_until_it_learns():
    """Switched-off units output zero; switched back on they start at zero effect, with gradients."""
    torch.manual_seed(0)
    model = cifar_resnet18(width=0.125, num_classes=3).eval()
    groups = model.unit_groups()
    units = UnitMask(model, groups, magnitude_subnetwork(model, groups, target_widths(groups, 0.5)))
    units.apply()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        assert torch.allclose(before, extract(model, units.subnet).eval()(x), atol=1e-5)
    group = groups[3]
    off = units.off(group)[:2]
    units.regrow(group, off, None, torch.Generator().manual_seed(0))
    assert set(off) <= set(units.kept[group.name]) and unit_norms(model, group)[off].min() > 0
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
    model.train()
    model(x).sum().backward()
    reader = next(s for s in group.slots if s.role == "in")
    assert model.get_submodule(reader.module).weight.grad[:, torch.as_tensor(off)].abs().sum() > 0


def test_mest_stays_at_the_ratio_mutates_and_pays_dense_flops(cnn_task):
    backbone, _, data, _, _ = cnn_task
    result = create_method("mest", **BUDGET).run(backbone, data, None, [0, 1, 2])
    groups = backbone.unit_groups()
    assert result.subnet.widths() == target_widths(groups, 0.5)
    assert result.params["mutations"] == 1 and result.params["units_swapped"] >= len(groups)  # at step 5 of 10, >= 1 per group
    start = magnitude_subnetwork(backbone, groups, target_widths(groups, 0.5))
    assert any(not np.array_equal(start.kept[g.name], result.subnet.kept[g.name]) for g in groups)
    assert result.costs.iterations == 10 and result.costs.flops == dense_costs(backbone, 3, 10, 8) + refresh_costs(result.model)
    assert sum(p.numel() for p in result.model.parameters()) < 0.5 * sum(p.numel() for p in backbone.parameters())


def test_dlth_moves_the_removed_units_toward_zero_then_fine_tunes_small(cnn_task):
    backbone, _, data, _, _ = cnn_task
    dlth = create_method("dlth", **BUDGET, seed=7)
    result = dlth.run(backbone, data, None, [0, 1, 2])
    groups = backbone.unit_groups()
    assert result.subnet.widths() == target_widths(groups, 0.5)
    assert all(np.array_equal(result.subnet.kept[k], v) for k, v in random_subnetwork(groups, 0.5, 7).kept.items())  # the random ticket
    doomed = UnitMask(backbone, groups, result.subnet)
    before = float(np.sqrt(sum(p.index_select(dim, idx).detach().float().pow(2).sum().item() for g in groups for p, dim, idx in doomed.out_params(g, doomed.off(g)))))
    assert result.params["removed_norm"] < 0.8 * before
    dense = result.params["penalised_iterations"]
    small = Costs()
    small.add_steps(result.model, 10 - dense, 8)
    assert dense == 6 and result.costs.flops == dense_costs(backbone, 3, dense, 8) + small.flops + refresh_costs(result.model) and result.costs.iterations == 10


def test_iht_reptile_meta_trains_once_on_zoo_tasks_only(cnn_task):
    backbone, dataset, data, zoo, _ = cnn_task
    settings = BUDGET | {"meta_iterations": 5, "meta_batch": 2, "inner_steps": 2, "cycles": 2}
    first = create_method("iht-reptile", **settings, dataset=dataset).run(backbone, data, zoo, None)
    zoo_tasks = {r.task.id for r in zoo.records(method="ifp")}
    assert first.params["meta_tasks"] == len(zoo_tasks) and data.task.id not in zoo_tasks and not first.params["meta_cached"]
    assert first.params["meta_tflops"] > 0 and first.subnet.widths() == target_widths(backbone.unit_groups(), 0.5)
    assert first.costs.iterations == 10 and first.model.get_classifier().out_features == 3
    cache = list((zoo.root / "meta").glob("iht-reptile-*.safetensors"))
    assert len(cache) == 1
    again = create_method("iht-reptile", **settings, dataset=dataset).run(backbone, data, zoo, None)  # paid once: from the cache
    assert again.params["meta_cached"] and again.params["meta_tflops"] == first.params["meta_tflops"]
    assert all(np.array_equal(again.subnet.kept[k], v) for k, v in first.subnet.kept.items())
    with pytest.raises(ConfigError, match="one of the tasks IHT-Reptile meta-trained on"):
        create_method("iht-reptile", **settings, dataset=dataset).run(backbone, dataset.load_task(zoo.records()[0].task), zoo, None)
    with pytest.raises(ConfigError, match="needs their dataset"):
        create_method("iht-reptile", **settings).run(backbone, data, zoo, None)



def test_statistics_are_re_estimated_after_the_last_step_except_for_the_papers_random(tiny_setup):
    """``refresh_bn`` batches replace the running averages of training; the paper's random keeps them."""
    dataset, _, weights = tiny_setup
    backbone, _ = load_backbone(weights, dataset=dataset)
    data = dataset.load_task(dataset.task(dataset.classes[:3]))
    budget = BUDGET | {"iterations": 3, "seed": 3}
    stale = create_method("mest", **budget, refresh_bn=0).run(backbone, data, None, [0, 1, 2])
    fresh = create_method("mest", **budget).run(backbone, data, None, [0, 1, 2])
    weights = lambda m: {k: v for k, v in m.state_dict().items() if "running" not in k and "num_batches" not in k}  # noqa: E731
    assert all(torch.equal(v, weights(fresh.model)[k]) for k, v in weights(stale.model).items())  # same training
    expected = copy.deepcopy(stale.model)
    recalibrate_bn(expected, data, 5, 8, 3)
    for (name, a), b in zip(expected.named_buffers(), fresh.model.buffers()):
        if "running" in name:
            assert torch.allclose(a, b)
    assert fresh.costs.flops == stale.costs.flops + refresh_costs(fresh.model) and fresh.costs.iterations == stale.costs.iterations
    assert create_method("random-paper").refresh_bn == 0 and create_method("random").refresh_bn == 5
    with pytest.raises(ConfigError, match="refresh_bn"):
        create_method("dlth", refresh_bn=-1)
