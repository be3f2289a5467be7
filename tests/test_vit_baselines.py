"""The paper's ViT baselines: token pruning in the model, UVC and PoWER (budgets, FLOPs, bad input)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metavote.cli import main
from metavote.data import sample_tasks
from metavote.errors import ConfigError
from metavote.methods import create_method, retention_config
from metavote.methods.power import SoftExtract, matched_flops
from metavote.models import create_model, load_backbone, vision_transformer
from metavote.models.vit import top_tokens
from metavote.pruning import target_widths
from metavote.training import Costs, step_flops


@pytest.fixture()
def vit_task(vit_setup):
    dataset, folder, weights = vit_setup
    backbone, _ = load_backbone(weights, dataset=dataset)
    return backbone, dataset.load_task(sample_tasks(dataset, 3, 1, seed=2)[0]), folder, weights


def test_top_tokens_keeps_the_class_token_and_the_most_attended_in_order():
    x = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1).repeat(2, 1, 2)  # token i holds the value i
    received = torch.tensor([[9.0, 0.1, 5.0, 0.2, 4.0, 3.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    kept = top_tokens(x, received, 3)
    assert kept[0, :, 0].tolist() == [0, 2, 4] and kept[1, :, 0].tolist() == [0, 4, 5]  # the class token even when it ranks last


def test_a_token_pruned_vit_rebuilds_from_its_config_and_costs_less():
    torch.manual_seed(0)
    dense = vision_transformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=3).eval()
    pruned = create_model(dense.config | {"tokens_kept": [9, 3]}, 3).eval()
    pruned.load_state_dict(dense.state_dict())
    assert pruned.tokens_kept == [9, 3] and dense.tokens_kept is None and "tokens_kept" not in dense.config
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert pruned(x).shape == (2, 3) and not torch.allclose(pruned(x), dense(x))
        pruned.set_tokens_kept([17, 17])  # keeping every token is the dense model, through explicit attention
        assert torch.allclose(pruned(x), dense(x), atol=1e-5)
    pruned.set_tokens_kept([9, 3])
    assert step_flops(pruned, 1, backward=False) < 0.7 * step_flops(dense, 1, backward=False)
    with pytest.raises(ConfigError, match="tokens_kept needs 2 counts in 1..17"):
        pruned.set_tokens_kept([0, 3])


def test_uvc_keeps_mvps_widths_and_pays_for_its_teacher(vit_task):
    """UVC cuts each block to round((1 - r) n) heads and nodes, the smallest by norm; its FLOPs are the
    dense student for the joint phase, the cut student after, and the teacher's forward every step."""
    backbone, data, _, _ = vit_task
    result = create_method("uvc", ratio=0.5, iterations=10, batch_size=8).run(backbone, data, None, [0, 1, 2])
    groups = backbone.unit_groups()
    assert result.subnet.widths() == target_widths(groups, 0.5)
    assert [b.attn.num_heads for b in result.model.blocks] == [2, 2] and [b.mlp.fc1.out_features for b in result.model.blocks] == [48, 48]
    assert result.params["joint_iterations"] == 6 and result.costs.iterations == 10
    dense, expected = create_model(backbone.config, 3), Costs()
    expected.add_steps(dense, 6, 8)
    expected.add_steps(result.model, 4, 8)
    expected.add_steps(dense, 10, 8, backward=False)
    assert result.costs.flops == expected.flops
    with torch.no_grad():
        assert result.model(torch.rand(2, 3, 32, 32)).shape == (2, 3)


def test_uvc_shrinks_the_units_it_will_cut():
    """The proximal step divides the scheduled units' input columns; the others are untouched."""
    from metavote.methods.uvc import proximal_shrink, smallest_units
    from metavote.pruning import IN, unit_norms

    torch.manual_seed(0)
    model = vision_transformer(img_size=16, patch_size=8, embed_dim=8, depth=1, num_heads=2, mlp_ratio=1.0, num_classes=2)
    groups = model.unit_groups()
    norms = {g.name: unit_norms(model, g, IN) for g in groups}
    doomed = smallest_units(model, groups, {"blocks.0.attn": 1, "blocks.0.mlp": 3})
    assert doomed["blocks.0.mlp"].tolist() == sorted(torch.argsort(norms["blocks.0.mlp"])[:3].tolist())
    proximal_shrink(model, groups, doomed, 2.0)
    for g in groups:
        after = unit_norms(model, g, IN)
        for unit in range(g.size):
            factor = 0.25 if unit in doomed[g.name] else 1.0  # squared norms: (1/2)^2
            assert after[unit].item() == pytest.approx(factor * norms[g.name][unit].item(), rel=1e-5)


def test_retention_config_is_monotone_and_fills_the_budget():
    masses = np.array([10.0, 12.0, 4.0, 6.0, 0.0])
    kept = retention_config(masses, 16, lambda k: sum(k) <= 20)
    assert kept == sorted(kept, reverse=True) and sum(kept) <= 20 and sum(kept) >= 18
    assert kept[-1] == 0 and kept[0] >= kept[2] > 0
    assert retention_config(np.zeros(3), 16, lambda k: sum(k) <= 9) == [3, 3, 3]  # nothing learned: even


def test_power_matches_the_flops_of_unit_pruning_and_counts_what_ran(vit_task):
    backbone, data, _, _ = vit_task
    result = create_method("power", ratio=0.5, iterations=10, batch_size=8).run(backbone, data, None, [0, 1, 2])
    model, budget = result.model, result.params["flops_budget"]
    dense = create_model(backbone.config, 3)  # the backbone with the task's head: what PoWER starts from
    assert budget == matched_flops(dense, 0.5)
    assert step_flops(model, 1, backward=False) <= budget < step_flops(dense, 1, backward=False)
    kept = model.tokens_kept
    assert kept == result.params["tokens_kept"] and kept == sorted(kept, reverse=True) and kept[0] < 17
    # every weight is still there: PoWER removes tokens, not units
    assert {k: v.shape for k, v in model.state_dict().items() if not k.startswith("head.")} == \
           {k: v.shape for k, v in backbone.state_dict().items() if not k.startswith("head.")}
    search = result.params["search_iterations"]
    soft, expected = create_model(backbone.config, 3), Costs()
    soft.blocks = torch.nn.Sequential(*[SoftExtract(b, 16) for b in soft.blocks])  # the search: dense, explicit attention
    expected.add_steps(soft, search, 8)
    expected.add_steps(model, 10 - search, 8)
    assert search == 4 and result.costs.flops == expected.flops


def test_power_bad_input_is_one_clear_error(tmp_path, vit_task, capsys):
    backbone, data, folder, weights = vit_task
    with pytest.raises(ConfigError, match="ratio 0.8 leaves less compute than the class token alone needs"):
        create_method("power", ratio=0.8, iterations=2, batch_size=8).run(backbone, data, None, None)
    code = main(["zoo", "build", "--zoo", str(tmp_path / "zoo"), "--dataset", str(folder), "--backbone", str(weights), "--method", "power",
                 "--tasks", "1", "--n-way", "3", "--iterations", "1", "--batch-size", "8", "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "power does not prune units" in err and not (tmp_path / "zoo").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_uvc_and_power_run_on_cuda(vit_task):
    backbone, data, _, _ = vit_task
    backbone = backbone.cuda()
    for key in ("uvc", "power"):
        result = create_method(key, ratio=0.5, iterations=4, batch_size=8).run(backbone, data, None, [0, 1, 2])
        assert next(result.model.parameters()).is_cuda and result.costs.iterations == 4 and 0 <= result.accuracy <= 1
