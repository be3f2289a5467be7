"""Latency-aware widths: multiples of the kernels' block at no more FLOPs than the ratio's, as a method setting."""

from __future__ import annotations

import numpy as np
import pytest

from metavote.errors import ConfigError
from metavote.experiments import default_method
from metavote.methods import MVP, create_method
from metavote.models import cifar_resnet18, load_backbone
from metavote.pruning import aligned_widths, target_widths, width_flops


def test_aligned_widths_are_multiples_at_no_more_flops():
    model = cifar_resnet18(num_classes=10, width=0.5)  # the shared backbone's shapes: groups of 32, 64, 128, 256
    groups = model.unit_groups()
    for ratio in (0.7, 0.8):
        widths = target_widths(groups, ratio)
        aligned = aligned_widths(model, widths, 8)
        assert all(w % 8 == 0 and 8 <= w <= g.size for g, w in zip(groups, aligned.values()))
        assert width_flops(model, aligned) <= width_flops(model, widths)
        assert aligned != widths and aligned == aligned_widths(model, widths, 8)  # it moved them, deterministically
        # close to each group's share: no group more than one block away from its width
        assert all(abs(aligned[g.name] - widths[g.name]) <= 8 for g in groups if widths[g.name] >= 8)
    assert aligned_widths(model, widths, 1) == widths
    with pytest.raises(ConfigError, match="smaller align"):  # r = 0.9 keeps 3 of 32: no multiple of 8 fits its FLOPs
        aligned_widths(model, target_widths(groups, 0.9), 8)
    with pytest.raises(ConfigError, match="align must be >= 1"):
        aligned_widths(model, widths, 0)


@pytest.mark.parametrize("block", [8, 16])
def test_auto_aligns_on_this_cpus_block_where_the_flops_allow(monkeypatch, block):
    """AVX2 (block 8) and AVX-512 (block 16) alike: at r = 0.5 the width-0.5 ResNet-18 fits multiples of 16; at r = 0.8 it
    does not (its first stage keeps 6 of 32), and auto falls back to 8."""
    import metavote.cpu
    from metavote.pruning import host_aligned_widths

    monkeypatch.setattr(metavote.cpu, "channel_block", lambda: block)
    model = cifar_resnet18(num_classes=10, width=0.5)
    groups = model.unit_groups()
    roomy, tight = target_widths(groups, 0.5), target_widths(groups, 0.8)
    assert host_aligned_widths(model, roomy) == aligned_widths(model, roomy, block)
    assert host_aligned_widths(model, tight) == aligned_widths(model, tight, 8)
    with pytest.raises(ConfigError, match="smaller align"):
        aligned_widths(model, tight, 16)
    assert MVP(ratio=0.8, align="auto").widths(model) == aligned_widths(model, tight, 8)
    with pytest.raises(ConfigError, match="align must be a whole number of channels or 'auto'"):
        MVP(align="fast")


def test_small_groups_keep_their_width():
    model = cifar_resnet18(num_classes=10, width=0.125)  # groups of 4, 8, 16, 32 units
    groups = model.unit_groups()
    widths = target_widths(groups, 0.6)
    aligned = aligned_widths(model, widths, 8)
    for g in groups:
        if g.size < 16:
            assert aligned[g.name] == widths[g.name]
        else:
            assert aligned[g.name] % 8 == 0
    assert width_flops(model, aligned) <= width_flops(model, widths)


def test_methods_draw_aligned_widths(small_zoo):
    """MVP's vote and random pruning take ``align``; methods that keep no per-group widths refuse it in one line."""
    zoo, dataset, _, tasks = small_zoo
    data = dataset.load_task(next(t for t in [dataset.task(dataset.classes[i:i + 3]) for i in range(4)] if t not in tasks))
    backbone, _ = load_backbone(zoo.root.parent / "backbone.safetensors")
    groups = backbone.unit_groups()
    plain = target_widths(groups, 0.6)
    budget = dict(ratio=0.6, iterations=1, batch_size=8)
    for method in (MVP(neighbours=2, align=4, **budget), create_method("random", align=4, **budget)):
        result = method.run(backbone, data, zoo, None)
        widths = result.subnet.widths()
        assert widths == aligned_widths(backbone, plain, 4) and widths != plain
        assert all(widths[g.name] % 4 == 0 for g in groups if g.size >= 8)
        assert result.params["align"] == 4 and np.isfinite(result.accuracy)
    for key in ("nearest", "ahnp", "iht-reptile"):
        with pytest.raises(ConfigError, match="cannot align"):
            create_method(key, align=8)
    assert default_method(zoo, 0.5, align=8)[0] == "mvp" and default_method(zoo, 0.5)[0] == "nearest"
