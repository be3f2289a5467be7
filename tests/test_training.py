"""FLOP accounting, evaluation, head imprinting, learning-rate schedule and optimiser groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import metavote.training as mvtraining
from helpers import class_colours, synthetic_dataset
from metavote.errors import ConfigError
from metavote.models import cifar_resnet18, replace_head
from metavote.training import Costs, cosine_lr, evaluate, finetune, frozen, imprint_head, predict, recalibrate_bn, sgd, step_flops


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return cifar_resnet18(width=0.125, num_classes=6), cifar_resnet18(width=0.25, num_classes=6)


def test_step_flops_backward_and_width(tiny_models):
    small, wide = tiny_models
    forward = step_flops(small, batch_size=2, backward=False)
    train = step_flops(small, batch_size=2)
    assert forward > 0
    assert 2.5 <= train / forward <= 3.5
    assert 3.0 <= step_flops(wide, batch_size=2) / train <= 5.0
    # linear in the batch size
    assert step_flops(small, batch_size=4, backward=False) == 2 * forward


def test_step_flops_does_not_touch_the_model(tiny_models):
    small, _ = tiny_models
    small.eval()
    before = {k: v.clone() for k, v in small.state_dict().items()}
    step_flops(small, batch_size=2)
    assert not small.training
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())
    assert all(p.grad is None for p in small.parameters())


def test_costs_add_steps_accumulates_and_measures_each_shape_once(tiny_models, monkeypatch):
    small, _ = tiny_models
    calls = []
    real = mvtraining.step_flops

    def counting(model, batch_size=128, backward=True, input_size=None):
        calls.append((batch_size, backward))
        return real(model, batch_size, backward, input_size)

    monkeypatch.setattr(mvtraining, "step_flops", counting)
    per_step = real(small, 2)
    costs = Costs()
    costs.add_steps(small, 3, 2)
    costs.add_steps(small, 4, 2)
    assert costs.flops == 7 * per_step and costs.iterations == 7 and len(calls) == 1
    costs.add_steps(small, 0, 2)
    assert costs.flops == 7 * per_step and len(calls) == 1
    costs.add_steps(small, 5, 2, backward=False, training=False)  # scoring passes: FLOPs but no iterations
    assert costs.iterations == 7 and len(calls) == 2
    assert costs.flops == 7 * per_step + 5 * real(small, 2, backward=False)
    # another shape (a 3-way head) is measured again, once
    model = cifar_resnet18(width=0.125, num_classes=6)
    replace_head(model, 3)
    costs.add_steps(model, 1, 2)
    costs.add_steps(model, 1, 2)
    assert len(calls) == 3
    assert costs.tflops == costs.flops / 1e12


class LabelReader(nn.Module):
    """Returns one-hot logits of the label written into each image's first pixel (plus ``shift``)."""

    def __init__(self, num_classes: int, shift: int = 0) -> None:
        super().__init__()
        self.num_classes, self.shift = num_classes, shift
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        label = (x[:, 0, 0, 0] * 255).round().long()
        return F.one_hot((label + self.shift) % self.num_classes, self.num_classes).float() + 0 * self.dummy


def _labelled_images(n=23, k=5, seed=0):
    y = np.random.default_rng(seed).integers(0, k, n)
    x = np.zeros((n, 32, 32, 3), np.uint8)
    x[:, 0, 0, 0] = y
    return x, y


def test_evaluate_one_hot_of_true_labels_is_perfect():
    x, y = _labelled_images()
    assert evaluate(LabelReader(5), x, y, batch_size=4) == 1.0  # several batches, order kept
    assert evaluate(LabelReader(5, shift=1), x, y, batch_size=4) == 0.0
    wrong = y.copy()
    wrong[:5] = (wrong[:5] + 1) % 5
    assert evaluate(LabelReader(5), x, wrong) == pytest.approx(18 / 23)
    assert predict(LabelReader(5), x, batch_size=7).shape == (23, 5)
    with pytest.raises(ConfigError):
        evaluate(LabelReader(5), x[:0], y[:0])


class ColourFeatures(nn.Module):
    """A backbone whose features separate the synthetic classes: RBF similarities of the image's
    mean colour to each class colour, mixed by a fixed random matrix (so they are not one-hot)."""

    def __init__(self, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("colours", torch.tensor(class_colours(num_classes), dtype=torch.float32) / 255)
        self.register_buffer("mix", torch.randn(num_classes, 16, generator=torch.Generator().manual_seed(seed)))
        self.fc = nn.Linear(16, num_classes)

    # the classifier interface imprint_head uses (as on a metavote Backbone)
    def get_classifier(self):
        return self.fc

    def set_classifier(self, head):
        self.fc = head

    def features(self, x):
        d = torch.cdist(x.mean((2, 3)), self.colours)
        return torch.exp(-(d / 0.1) ** 2) @ self.mix

    def forward(self, x):
        return self.fc(self.features(x))


def test_imprint_head_on_separating_features():
    ds = synthetic_dataset()
    torch.manual_seed(0)
    model = ColourFeatures(ds.num_classes)
    assert evaluate(model, ds.test_images, ds.test_labels) < 0.5  # the random head knows nothing
    imprint_head(model, ds.train_images, ds.train_labels, ds.num_classes, per_class=5)
    assert isinstance(model.fc, nn.Linear) and model.fc.out_features == ds.num_classes
    assert torch.count_nonzero(model.fc.bias) == 0
    assert evaluate(model, ds.test_images, ds.test_labels) >= 0.95
    # rows are normalised class means, in label order
    norms = model.fc.weight.norm(dim=1)
    torch.testing.assert_close(norms, norms[:1].expand_as(norms))
    mixed = F.normalize(model.mix, dim=1)
    cos = F.normalize(model.fc.weight, dim=1) @ mixed.T
    assert torch.equal(cos.argmax(1), torch.arange(ds.num_classes))


def test_imprint_head_on_a_resnet_changes_only_the_head():
    ds = synthetic_dataset(num_classes=3, train_per_class=4, test_per_class=2)
    torch.manual_seed(0)
    model = cifar_resnet18(width=0.125, num_classes=10)
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    imprint_head(model, ds.train_images, ds.train_labels, 3)
    assert model.fc.weight.shape == (3, model.num_features)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in body.items())  # eval mode: BN stats kept


def test_cosine_lr_endpoints():
    assert cosine_lr(0, 100, 0.4) == pytest.approx(0.4)
    assert cosine_lr(100, 100, 0.4) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(250, 100, 0.4) == pytest.approx(0.0, abs=1e-12)  # clamped after the end
    assert cosine_lr(50, 100, 0.4) == pytest.approx(0.2)
    assert cosine_lr(100, 100, 0.4, final_fraction=0.1) == pytest.approx(0.04)
    assert cosine_lr(0, 100, 0.4, final_fraction=0.1) == pytest.approx(0.4)
    lrs = [cosine_lr(s, 10, 1.0) for s in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly decreasing
    assert cosine_lr(25, 100, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_sgd_has_no_weight_decay_on_1d_params():
    model = cifar_resnet18(width=0.125, num_classes=4)
    opt = sgd(model, 0.1, weight_decay=0.01)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert any(p is model.fc.bias for p in no_decay["params"]) and any(p is model.bn1.weight for p in no_decay["params"])
    assert any(p is model.fc.weight for p in decay["params"])
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    # behaviour: with zero gradients only the >1-d parameters shrink
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    w, b = model.fc.weight.detach().clone(), model.bn1.weight.detach().clone()
    opt.step()
    torch.testing.assert_close(model.fc.weight.detach(), w * (1 - 0.1 * 0.01 * 1.9))  # Nesterov: g + 0.9 g
    assert torch.equal(model.bn1.weight.detach(), b)
    with pytest.raises(ConfigError):
        sgd(model, 0.0)
    assert not sgd(model, 0.1, momentum=0.0).defaults["nesterov"]


def test_recalibrate_bn_re_estimates_statistics_only():
    torch.manual_seed(0)
    dataset = synthetic_dataset()
    data = dataset.load_task(dataset.task(dataset.classes[:3]))
    model = cifar_resnet18(width=0.125, num_classes=3)
    model.bn1.running_mean.fill_(5.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    costs = Costs()
    recalibrate_bn(model, data, batches=1, batch_size=8, seed=3, costs=costs)
    x, _ = next(iter(data.loader(8, seed=3)))  # the same batch
    with torch.no_grad():
        h = model.conv1((x - model.mean) / model.std)
    assert torch.allclose(model.bn1.running_mean, h.mean((0, 2, 3)), atol=1e-4)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert model.bn1.momentum == 0.1 and costs.flops > 0 and costs.iterations == 0


def test_finetune_counts_its_steps():
    dataset = synthetic_dataset()
    data = dataset.load_task(dataset.task(dataset.classes[:3]))
    model, costs = cifar_resnet18(width=0.125, num_classes=3), Costs()
    loss = finetune(model, data, 3, 0.01, 8, seed=0, costs=costs)  # returns the mean training loss now
    assert math.isfinite(loss) and loss >= 0
    accuracy = evaluate(model, data.test_images, data.test_labels)
    assert 0 <= accuracy <= 1 and costs.iterations == 3 and costs.flops == 3 * step_flops(model, 8)
    with pytest.raises(ConfigError, match="iterations"):
        finetune(model, data, -1, 0.01, 8)


def test_frozen_blocks_stay_put_and_make_steps_cheaper():
    dataset = synthetic_dataset()
    data = dataset.load_task(dataset.task(dataset.classes[:3]))
    torch.manual_seed(0)
    model = cifar_resnet18(width=0.125, num_classes=3)
    blocks = model.body_blocks()
    assert len(blocks) == 9 and {id(p) for b in blocks for p in b} == {id(p) for k, p in model.named_parameters() if not k.startswith("fc.")}
    before = [[p.detach().clone() for p in b] for b in blocks]
    full, half = Costs(), Costs()
    finetune(model, data, 1, 0.01, 8, seed=0, costs=full)
    with frozen(model, 0.5) as count:
        assert count == 4 and not any(p.requires_grad for b in blocks[:4] for p in b)
        moved = [[p.detach().clone() for p in b] for b in blocks]
        finetune(model, data, 2, 0.01, 8, seed=0, costs=half)
    assert all(p.requires_grad for p in model.parameters())  # restored
    assert all(torch.equal(p, q) for b, m in zip(blocks[:4], moved[:4]) for p, q in zip(b, m))
    assert all(not torch.equal(p, q) for b, m in zip(blocks[4:], moved[4:]) for p, q in zip(b, m) if p.ndim > 1)
    assert not torch.equal(blocks[0][0], before[0][0])  # the unfrozen step moved the stem
    # no backward through the stem and the first three blocks: about a third less than a full step
    assert 0.55 < half.flops / 2 / full.flops < 0.8
    with pytest.raises(ConfigError, match="frozen fraction"):
        with frozen(model, 1.0):
            pass


def test_costs_are_counted_once_per_distinct_cost():
    """A model whose cost depends on more than its shapes (here: how many input features it reads,
    as a token-pruning method's would) says so in ``flops_key``, and each distinct cost is measured."""
    from torch import nn

    from metavote.training import Costs

    class Reads(nn.Module):
        input_size = (3, 4, 4)

        def __init__(self):
            super().__init__()
            self.linear, self.keep = nn.Linear(48, 10), 48

        def forward(self, x):
            return x.flatten(1)[:, : self.keep] @ self.linear.weight[:, : self.keep].T

        def flops_key(self):
            return (tuple(self.linear.weight.shape), self.keep)

    model, costs = Reads(), Costs()
    costs.add_steps(model, 1, 4, backward=False)
    full = costs.flops
    model.keep = 12
    costs.add_steps(model, 2, 4, backward=False)
    assert full == 2 * 4 * 48 * 10 and costs.flops == full + 2 * (2 * 4 * 12 * 10)


def test_threads_follow_the_cores_other_processes_leave_free(monkeypatch):
    """free_cores counts each allowed core's busy share between two /proc/stat samples."""
    import io

    from metavote import training

    snapshots = iter([
        "cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0\ncpu1 100 0 0 100 0 0 0 0\ncpu2 0 0 0 0 0 0 0 0\n",
        # cpu0 spent the interval busy, cpu1 idle; cpu2 is not ours
        "cpu  0 0 0 0 0 0 0 0\ncpu0 200 0 0 100 0 0 0 0\ncpu1 100 0 0 200 0 0 0 0\ncpu2 900 0 0 0 0 0 0 0\n",
    ])
    monkeypatch.setattr(training, "open", lambda *a, **k: io.StringIO(next(snapshots)), raising=False)
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(training.time, "sleep", lambda s: None)
    assert training.free_cores() == 1
    monkeypatch.setenv("METAVOTE_THREADS", "2")  # an explicit count wins
    threads = training.torch.get_num_threads()
    try:
        assert training.set_threads() == 2 and training.set_threads(1) == 1
    finally:
        training.torch.set_num_threads(threads)
