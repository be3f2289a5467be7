"""Meta-Vote Pruning: votes, sampling from softmax(v / tau), neighbour averaging, end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metavote.errors import ConfigError
from metavote.models import cifar_resnet18, load_backbone
from metavote.methods import MVP, average_neighbours, create_method, sample_by_votes, vote_counts
from metavote.pruning import SubNetwork, extract, target_widths


def test_vote_counts():
    sizes = {"a": 5}
    votes = vote_counts([SubNetwork({"a": [0, 1]}, sizes), SubNetwork({"a": [1, 4]}, sizes), SubNetwork({"a": [1]}, sizes)])
    assert votes["a"].tolist() == [1, 3, 0, 0, 1]
    with pytest.raises(ConfigError):
        vote_counts([])


def test_sampling_follows_the_votes():
    votes = {"a": np.array([3, 3, 3, 0, 0, 0, 0, 0]), "b": np.array([1, 0, 2, 0])}
    low = sample_by_votes(votes, {"a": 3, "b": 2}, temperature=0.05, seed=1)
    assert low.kept["a"].tolist() == [0, 1, 2] and low.kept["b"].tolist() == [0, 2]  # majority vote
    assert sample_by_votes(votes, {"a": 3, "b": 2}, 1.0, seed=5).widths() == {"a": 3, "b": 2}
    a, b = sample_by_votes(votes, {"a": 3, "b": 2}, 1.0, seed=9), sample_by_votes(votes, {"a": 3, "b": 2}, 1.0, seed=9)
    assert all(np.array_equal(a.kept[g], b.kept[g]) for g in votes)
    # a high temperature approaches uniform sampling: every unit is drawn about 3/8 of the time
    freq = np.zeros(8)
    for seed in range(2000):
        freq[sample_by_votes({"a": votes["a"]}, {"a": 3}, 1000.0, seed).kept["a"]] += 1
    assert np.allclose(freq / 2000, 3 / 8, atol=0.05)
    # at tau = 1 a unit with 3 votes is e^3 times likelier per draw than one with none
    freq = np.zeros(8)
    for seed in range(2000):
        freq[sample_by_votes({"a": votes["a"]}, {"a": 1}, 1.0, seed).kept["a"]] += 1
    p = np.exp(votes["a"]) / np.exp(votes["a"]).sum()
    assert np.allclose(freq / 2000, p, atol=0.03)
    with pytest.raises(ConfigError, match="temperature"):
        sample_by_votes(votes, {"a": 3, "b": 2}, 0.0)


def test_average_neighbours_averages_only_over_holders():
    torch.manual_seed(0)
    backbone = cifar_resnet18(width=0.125, num_classes=4)
    sizes = {g.name: g.size for g in backbone.unit_groups()}
    first = SubNetwork({g: np.arange(0, n // 2) for g, n in sizes.items()}, sizes)  # units 0 .. n/2-1
    second = SubNetwork({g: np.arange(n // 4, 3 * n // 4) for g, n in sizes.items()}, sizes)  # units n/4 .. 3n/4-1
    neighbours = []
    for subnet, shift in ((first, 1.0), (second, 3.0)):
        state = extract(backbone, subnet).state_dict()
        neighbours.append((subnet, {k: v + shift if v.is_floating_point() else v for k, v in state.items()}))
    avg = average_neighbours(backbone, neighbours)
    ref = backbone.state_dict()
    w, w0 = avg["layer4.0.bn1.weight"], ref["layer4.0.bn1.weight"]  # 64 units: 0-15 first only, 16-31 both, 32-47 second only
    assert torch.allclose(w[:16], w0[:16] + 1) and torch.allclose(w[16:32], w0[16:32] + 2)
    assert torch.allclose(w[32:48], w0[32:48] + 3) and torch.equal(w[48:], w0[48:])
    conv, conv0 = avg["layer4.0.conv2.weight"], ref["layer4.0.conv2.weight"]  # out: layer4 stream, in: layer4.0.conv1
    assert torch.allclose(conv[20, 20], conv0[20, 20] + 2)  # both neighbours hold (20, 20)
    assert torch.allclose(conv[10, 40], conv0[10, 40])  # first holds row 10 but not column 40: nobody holds it
    assert "fc.weight" not in avg
    first_wins = average_neighbours(backbone, neighbours, rule="first")["layer4.0.bn1.weight"]  # shared units: the first's value
    assert torch.allclose(first_wins[:32], w0[:32] + 1) and torch.allclose(first_wins[32:48], w0[32:48] + 3) and torch.equal(first_wins[48:], w0[48:])


def test_mvp_end_to_end(small_zoo):
    zoo, dataset, _, tasks = small_zoo
    target_task = next(t for t in [dataset.task(dataset.classes[i:i + 3]) for i in range(4)] if t not in tasks)
    data = dataset.load_task(target_task)
    backbone, _ = load_backbone(zoo.root.parent / "backbone.safetensors")  # written by the tiny_setup fixture
    result = MVP(neighbours=2, ratio=0.5, iterations=6, batch_size=8).run(backbone, data, zoo, None)
    assert result.subnet.widths() == target_widths(backbone.unit_groups(), 0.5)
    assert len(result.params["neighbours"]) == 2 and target_task.id not in result.params["neighbours"]
    assert result.params["similarity"] == "ann" and result.params["head"] in ("neighbours", "imprint")
    skeleton = extract(backbone, result.subnet)
    assert {k: v.shape for k, v in skeleton.state_dict().items() if not k.startswith("fc.")} == \
           {k: v.shape for k, v in result.model.state_dict().items() if not k.startswith("fc.")}
    assert result.model.fc.out_features == 3 and result.costs.iterations == 6 and 0 <= result.accuracy <= 1
    given = MVP(neighbours=zoo.records()[:3], ratio=0.5, iterations=2, batch_size=8).run(backbone, data, zoo, [0, 1, 2])
    assert given.params["similarity"] == "given" and given.params["head"] == "pretrained"
    with pytest.raises(ConfigError, match="ratio"):
        MVP(neighbours=2, ratio=1.0, iterations=2, batch_size=8).run(backbone, data, zoo, None)


def test_nearest_record_method(small_zoo):
    """``nearest``: the record the search ranks first, its own units and weights, fine-tuned J steps; a
    ratio the record was not pruned at, or a vote, is refused."""
    zoo, dataset, _, tasks = small_zoo
    data = dataset.load_task(next(t for t in [dataset.task(dataset.classes[i:i + 3]) for i in range(4)] if t not in tasks))
    backbone, _ = load_backbone(zoo.root.parent / "backbone.safetensors")
    still = dict(ratio=0.5, iterations=0, batch_size=8, bn_batches=0, refresh_bn=0)
    ranked = MVP(neighbours=2, **still).run(backbone, data, zoo, None).params["neighbours"]
    result = create_method("nearest", **(still | {"iterations": 2})).run(backbone, data, zoo, None)
    assert result.method == "nearest" and result.params["neighbours"] == ranked[:1] and result.costs.iterations == 2
    _, record_subnet = zoo.load(zoo.get(ranked[0]))
    assert all(np.array_equal(result.subnet.kept[g], record_subnet.kept[g]) for g in record_subnet.kept)
    with pytest.raises(ConfigError, match="zoo's ratio"):
        create_method("nearest", **(still | {"ratio": 0.3})).run(backbone, data, zoo, None)
    with pytest.raises(ConfigError, match="use mvp"):
        create_method("nearest", omega="vote")


def test_decomposition_and_head_options(small_zoo):
    """The ablation switches: the nearest neighbour's model as it is, random units, each head, head-only steps."""
    zoo, dataset, _, tasks = small_zoo
    data = dataset.load_task(next(t for t in [dataset.task(dataset.classes[i:i + 3]) for i in range(4)] if t not in tasks))
    backbone, _ = load_backbone(zoo.root.parent / "backbone.safetensors")
    still = dict(ratio=0.5, iterations=0, batch_size=8, bn_batches=0, refresh_bn=0)
    searched = MVP(neighbours=2, **still).run(backbone, data, zoo, None)
    assert searched.params["search_tflops"] > 0  # LEEP's forward passes over the candidates, counted apart from training
    nearest_record = zoo.get(searched.params["neighbours"][0])
    near = MVP(neighbours=[nearest_record], omega="nearest", head="imprint", **still).run(backbone, data, zoo, None)
    neighbour_model, neighbour_subnet = zoo.load(nearest_record)
    assert all(np.array_equal(near.subnet.kept[g], neighbour_subnet.kept[g]) for g in near.subnet.kept)
    body = {k: v for k, v in neighbour_model.state_dict().items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert all(torch.equal(near.model.state_dict()[k], v) for k, v in body.items())  # its weights and statistics, untouched
    assert near.params["search_tflops"] == 0  # given records: no search
    rand = MVP(neighbours=zoo.records()[:3], omega="random", **still).run(backbone, data, zoo, None)
    assert rand.subnet.widths() == target_widths(backbone.unit_groups(), 0.5)
    with pytest.raises(ConfigError, match="pretrained"):
        MVP(neighbours=zoo.records()[:2], head="pretrained", **still).run(backbone, data, zoo, None)
    with pytest.raises(ConfigError, match="omega"):
        MVP(omega="best")
    tuned = MVP(neighbours=zoo.records()[:2], head="imprint", head_steps=3, **still).run(backbone, data, zoo, None)
    plain = MVP(neighbours=zoo.records()[:2], head="imprint", **still).run(backbone, data, zoo, None)
    changed = [k for k, v in plain.model.state_dict().items() if not torch.equal(v, tuned.model.state_dict()[k])]
    assert changed and all(k.startswith("fc.") for k in changed)  # only the head moved
    assert tuned.costs.iterations == 0 and tuned.costs.flops > plain.costs.flops
    steps = still | {"iterations": 2}
    whole = MVP(neighbours=zoo.records()[:2], **steps).run(backbone, data, zoo, None)
    half = MVP(neighbours=zoo.records()[:2], freeze=0.5, **steps).run(backbone, data, zoo, None)
    stem = ("conv1.weight", "bn1.weight", "layer1.0.conv1.weight")
    assert all(torch.equal(half.model.state_dict()[k], MVP(neighbours=zoo.records()[:2], **still).run(backbone, data, zoo, None)
                           .model.state_dict()[k]) for k in stem)  # the frozen blocks keep MVP's start
    assert half.costs.flops < whole.costs.flops and half.params["frozen_blocks"] == 4
    with pytest.raises(ConfigError, match="freeze"):
        MVP(freeze=1.0)


def test_every_record_competes_when_asked_and_a_short_budget_is_weighed(small_zoo):
    """``zoo_method="all"`` lets a record of another method (``prune --save-to``'s) be a neighbour;
    ``quality`` takes ``quality`` x log10(its budget / the zoo's) off its score."""
    import itertools

    from metavote.methods import weigh_budget
    from metavote.similarity import SimilarityError

    zoo, dataset, _, tasks = small_zoo
    backbone, _ = load_backbone(zoo.root.parent / "backbone.safetensors")
    target, other = [t for t in (dataset.task(list(c)) for c in itertools.combinations(dataset.classes, 3)) if t not in tasks][:2]
    weak = create_method("random", ratio=0.5, iterations=1, batch_size=8).run(backbone, dataset.load_task(other), None)
    zoo.add(other, weak)  # 1 step; the zoo's IFP records had 4
    data, still = dataset.load_task(target), dict(ratio=0.5, iterations=0, batch_size=8, bn_batches=0, refresh_bn=0)
    with pytest.raises(SimilarityError, match="fewer than the 7"):
        MVP(neighbours=7, **still).run(backbone, data, zoo, None)  # the zoo's IFP records only
    plain = MVP(neighbours=7, zoo_method="all", **still).run(backbone, data, zoo, None).params
    weighed = MVP(neighbours=7, zoo_method="all", quality=10.0, **still).run(backbone, data, zoo, None).params
    score = dict(zip(plain["neighbours"], plain["neighbour_scores"]))
    assert other.id in plain["neighbours"] and weighed["neighbours"][-1] == other.id
    assert weighed["neighbour_scores"][-1] == pytest.approx(score[other.id] + 10 * np.log10(1 / 4))
    assert dict(zip(weighed["neighbours"][:-1], weighed["neighbour_scores"][:-1])) == {t: s for t, s in score.items() if t != other.id}
    records = {r.task.id: r for r in zoo.records()}
    assert [r.task.id for r, _ in weigh_budget([(records[other.id], 0.0), (records[tasks[0].id], -0.5)], 1.0, 4)] == \
           [tasks[0].id, other.id]  # -0.5 beats 0 - log10(4) = -0.6
    with pytest.raises(ConfigError, match="quality"):
        MVP(quality=-1.0)
