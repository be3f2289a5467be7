"""Units that span many indices: extraction, masking, the dense view, averaging, votes and IoU are one
code path for ResNet channels and ViT heads and MLP nodes. Every test runs on both families."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metavote.errors import ConfigError

from metavote.methods import average_neighbours, random_subnetwork, sample_by_votes, vote_counts
from metavote.models import Slot, cifar_resnet18, vision_transformer
from metavote.pruning import SubNetwork, TensorIndex, dense_view, extract, mask, shrink, target_widths

from helpers import random_subnet, randomised


def tiny_vit(num_classes: int = 5):
    """A 3-block ViT on 32x32 images: 8x8 patches, 48 wide, 4 heads of 12, 96 MLP nodes."""
    return vision_transformer(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=4, mlp_ratio=2.0, num_classes=num_classes)


@pytest.fixture(params=["resnet", "vit"], scope="module")
def model(request):
    torch.manual_seed(0)
    net = cifar_resnet18(width=0.125, num_classes=6) if request.param == "resnet" else tiny_vit(6)
    return randomised(net)


def test_slot_indices_expand_a_head_to_its_q_k_v_rows():
    qkv, proj = Slot("attn.qkv", width=4, copies=3), Slot("attn.proj", "in", width=4)
    # 3 heads of 4: head 1 is rows 4..7 of q, 16..19 of k, 28..31 of v, and columns 4..7 of proj
    assert qkv.indices(np.array([1]), 3).tolist() == [4, 5, 6, 7, 16, 17, 18, 19, 28, 29, 30, 31]
    assert proj.indices(np.array([0, 2]), 3).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert Slot("conv").indices(np.array([3, 5]), 8).tolist() == [3, 5]


def test_layers_are_cut_by_type():
    from metavote.pruning import cut

    norm = nn.LayerNorm(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(6.0))
    small = cut(norm, torch.tensor([1, 4]), None)
    assert small.normalized_shape == (2,) and small.weight.tolist() == [1.0, 4.0] and small.eps == 1e-6
    linear = nn.Linear(5, 4)
    small = cut(linear, torch.tensor([0, 3]), torch.tensor([2]))
    assert torch.equal(small.weight, linear.weight[[0, 3]][:, [2]]) and torch.equal(small.bias, linear.bias[[0, 3]])
    with pytest.raises(ConfigError, match="cannot cut a GRU"):
        cut(nn.GRU(3, 3), None, None)


def test_vit_groups_are_heads_and_nodes_per_block():
    groups = tiny_vit().unit_groups()
    assert [(g.name, g.size) for g in groups[:2]] == [("blocks.0.attn", 4), ("blocks.0.mlp", 96)]
    assert len(groups) == 6 and all(g.can_be_empty for g in groups)
    assert groups[0].producers == ("blocks.0.attn.qkv",) and groups[0].consumers == ("blocks.0.attn.proj",)


def test_extract_equals_masked_model(model):
    subnet = random_subnet(model, keep=0.3)
    x = torch.rand(4, 3, 32, 32)
    small = extract(model, subnet).eval()
    with torch.no_grad():
        assert torch.allclose(small(x), mask(model, subnet).eval()(x), atol=1e-5)
        assert not torch.allclose(small(x), model(x), atol=1e-3)  # pruning changed something
    assert sum(p.numel() for p in small.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    assert {g.name: g.size for g in small.unit_groups()} == subnet.widths()  # physically removed, group by group
    if model.family == "resnet":  # a conv reads its input group's kept channels and writes its own
        assert small.layer3[0].conv1.weight.shape[:2] == (len(subnet.kept["layer3.0.conv1"]), len(subnet.kept["layer2"]))


def test_extracted_vit_has_fewer_heads_and_nodes():
    vit = randomised(tiny_vit())
    subnet = random_subnet(vit, keep=0.5)
    small = extract(vit, subnet)
    heads = len(subnet.kept["blocks.2.attn"])
    assert small.blocks[2].attn.num_heads == heads and small.blocks[2].attn.qkv.weight.shape == (3 * 12 * heads, 48)
    assert small.blocks[2].attn.proj.weight.shape == (48, 12 * heads)
    assert small.blocks[0].attn.num_heads == 0 and small.blocks[1].mlp.fc1.out_features == 0
    x = torch.rand(2, 17, 48)
    with torch.no_grad():  # a block without heads (or nodes) keeps only its residual path
        block = small.blocks[0]
        assert torch.equal(block(x), x + block.mlp(block.norm2(x)))
        block = small.blocks[1]
        assert torch.equal(block(x), x + block.attn(block.norm1(x)))


def test_body_blocks_hold_every_parameter_but_the_head_once_in_forward_order(model):
    blocks = model.body_blocks()
    ids = [id(p) for block in blocks for p in block]
    head = {id(p) for p in model.get_classifier().parameters()}
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()} - head
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))  # the stem's conv or the patch embedding
    assert id(first.weight) in {id(p) for p in blocks[0]}
    sub = extract(model, random_subnet(model, 0.5, seed=1))  # a pruned model splits the same way
    assert [len(b) for b in sub.body_blocks()] == [len(b) for b in blocks]


def test_extract_full_subnetwork_is_identity(model):
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(extract(model, SubNetwork.full(model.unit_groups())).eval()(x), model(x))


def test_shrink_composes_with_subnetwork(model):
    """Shrinking twice with local indices equals one extraction at the composed Omega."""
    first = random_subnet(model, keep=0.5, seed=1, empty=False)
    small = extract(model, first)
    rng = np.random.default_rng(2)
    local = {k: np.sort(rng.choice(len(v), max(1, len(v) // 2), replace=False)) for k, v in first.kept.items()}
    twice = shrink(small, local).eval()
    once = extract(model, first.compose(local)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(twice(x), once(x), atol=1e-6)


def test_dense_view_writes_at_omega_only(model):
    subnet = random_subnet(model, keep=0.4)
    small = extract(model, subnet)
    with torch.no_grad():
        for p in small.parameters():
            p.add_(1.0)
    index = TensorIndex(model, model.unit_groups())
    full, compact = model.state_dict(), small.state_dict()
    dense = dense_view(full, subnet, compact, index, skip=model.classifier_keys())
    assert not dense.keys() & model.classifier_keys()
    positions = index.indices(subnet)
    for key, value in dense.items():
        if key.endswith("num_batches_tracked"):
            continue
        where = torch.zeros_like(value, dtype=torch.bool)
        sel = [positions.get(key, {}).get(d, torch.arange(value.shape[d])) for d in range(value.ndim)]
        where[torch.meshgrid(*sel, indexing="ij")] = True
        assert torch.equal(value[where], compact[key].flatten()), key  # the compact weights, at Omega
        assert torch.equal(value[~where], full[key][~where]), key  # the backbone's everywhere else


def test_dense_view_puts_a_head_at_its_q_k_v_rows():
    vit = randomised(tiny_vit())
    groups = vit.unit_groups()
    kept = {g.name: np.arange(g.size) for g in groups} | {"blocks.1.attn": np.array([2])}
    subnet = SubNetwork(kept, {g.name: g.size for g in groups})
    small = extract(vit, subnet)
    zeros = {k: torch.zeros_like(v) for k, v in vit.state_dict().items()}
    dense = dense_view(zeros, subnet, small.state_dict(), TensorIndex(vit, groups))
    rows = dense["blocks.1.attn.qkv.weight"].abs().sum(1).nonzero().flatten().tolist()
    assert rows == [*range(24, 36), *range(72, 84), *range(120, 132)]  # head 2 of 4 (12 wide) in q, k and v
    assert dense["blocks.1.attn.proj.weight"].abs().sum(0).nonzero().flatten().tolist() == list(range(24, 36))


def test_average_neighbours_averages_only_over_holders(model):
    groups = model.unit_groups()
    g = groups[-1]
    a = SubNetwork({x.name: np.arange(x.size) for x in groups} | {g.name: np.array([0, 1])}, {x.name: x.size for x in groups})
    b = SubNetwork({x.name: np.arange(x.size) for x in groups} | {g.name: np.array([1, 2])}, {x.name: x.size for x in groups})
    states = []
    for value, subnet in ((1.0, a), (3.0, b)):
        small = extract(model, subnet)
        states.append({k: torch.full_like(v, value) if v.is_floating_point() else v for k, v in small.state_dict().items()})
    avg = average_neighbours(model, [(a, states[0]), (b, states[1])])
    slot = g.slots[0]  # an "out" slot: its rows are the units
    key = f"{slot.module}.weight"
    rows = lambda u: slot.indices(np.array([u]), g.size)  # noqa: E731
    assert torch.all(avg[key][rows(0)] == 1.0) and torch.all(avg[key][rows(1)] == 2.0) and torch.all(avg[key][rows(2)] == 3.0)
    assert torch.equal(avg[key][rows(3)], model.state_dict()[key][rows(3)])  # no neighbour holds unit 3
    assert not avg.keys() & model.classifier_keys()


def test_votes_sampling_and_iou(model):
    groups = model.unit_groups()
    subnets = [random_subnetwork(groups, 0.75, seed=s) for s in range(3)]
    votes = vote_counts(subnets)
    for g in groups:
        assert votes[g.name].sum() == sum(len(s.kept[g.name]) for s in subnets) and len(votes[g.name]) == g.size
    widths = target_widths(groups, 0.75)
    sampled = sample_by_votes(votes, widths, temperature=0.01, seed=0)
    assert sampled.widths() == widths
    for g in groups:  # at a low temperature the units every neighbour keeps go first
        unanimous, chosen = set(np.flatnonzero(votes[g.name] == 3)), set(sampled.kept[g.name])
        assert unanimous <= chosen if len(unanimous) <= widths[g.name] else chosen <= unanimous
    iou = subnets[0].iou(subnets[0])
    assert all(v == 1.0 for v in iou.values())
    other = subnets[0].iou(subnets[1])
    assert all(0 <= v <= 1 for v in other.values()) and any(v < 1 for v in other.values())
