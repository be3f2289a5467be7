"""Structured sub-networks of a ResNet, importance criteria, and iterative filter pruning (IFP).

Units and groups
    A *unit* is one output channel. A :class:`UnitGroup` is a set of channels that must be kept or
    dropped together: the internal channels of a block (``layer2.0.conv1``), or the residual
    stream of a stage (``layer2``: the block outputs, the shortcut and, for stage 1, the stem).
    The groups are described explicitly per architecture (:func:`unit_groups`) rather than traced:
    a ResNet has exactly these couplings, the description reads in ten lines, it needs no example
    input, and it works unchanged on an already-shrunk model. ``tests/test_pruning.py`` checks it
    against Torch-Pruning's DependencyGraph, which finds the same couplings by tracing.

Sub-networks
    A :class:`SubNetwork` is, per group, the sorted kept indices Omega in the *backbone's* numbering.
    :func:`extract` builds the physically smaller module; :func:`dense_view` writes a compact
    model's weights back into a copy of the backbone's at Omega (what MVP averages); :func:`mask`
    zeroes the dropped units of a full-size model (equal outputs to :func:`extract`, in eval mode).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tqdm.auto import tqdm

from .data import Augment, BatchLoader, TaskData
from .errors import ConfigError
from .models import BasicBlock, Bottleneck, ResNet, replace_head
from .training import Costs, Timer, cosine_lr, evaluate, imprint_head, sgd, train_steps

# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True)
class UnitGroup:
    """Channels pruned together: ``producers`` (conv/BN modules whose outputs are the units) and
    ``consumers`` (conv/linear modules that read them as input channels)."""

    name: str
    size: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]

    @property
    def norms(self) -> tuple[str, ...]:
        """The BatchNorm producers (where masking and the importance criteria act): every second producer."""
        return self.producers[1::2]


def unit_groups(model: ResNet) -> list[UnitGroup]:
    """The prunable groups of a ResNet in depth order (order of first use in the forward pass).

    A residual stream starts at the stem and again at every block with a shortcut conv; it holds
    the outputs of the blocks that add into it and is read by their successors. Every block adds
    one internal group per inner conv. CIFAR ResNet-18 has 12 groups (four streams named
    ``layer1``..``layer4``, eight ``layerS.B.conv1``); ResNet-50 has 37 (``stem``, four streams,
    32 internal).
    """
    streams = [{"name": "stem", "producers": ["conv1", "bn1"], "consumers": []}]
    internal: list[UnitGroup] = []
    for s in range(1, 5):
        for b, block in enumerate(getattr(model, f"layer{s}")):
            p = f"layer{s}.{b}"
            if not isinstance(block, (BasicBlock, Bottleneck)):
                raise ConfigError(f"unknown block type {type(block).__name__}")
            streams[-1]["consumers"].append(f"{p}.conv1")
            if block.downsample is not None:
                streams[-1]["consumers"].append(f"{p}.downsample.0")
                streams.append({"name": f"layer{s}", "producers": [f"{p}.downsample.0", f"{p}.downsample.1"], "consumers": []})
            inner = ["conv1", "conv2"] if isinstance(block, Bottleneck) else ["conv1"]
            for i, conv in enumerate(inner, start=1):
                internal.append(_group(model, f"{p}.{conv}", [f"{p}.{conv}", f"{p}.bn{i}"], [f"{p}.conv{i + 1}"]))
            last = len(inner) + 1
            streams[-1]["producers"] += [f"{p}.conv{last}", f"{p}.bn{last}"]
            if streams[-1]["name"] == "stem":
                streams[-1]["name"] = f"layer{s}"  # the stem's channels flow on through this stage
    streams[-1]["consumers"].append("fc")
    groups = internal + [_group(model, st["name"], st["producers"], st["consumers"]) for st in streams]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(groups, key=lambda g: min(order[p] for p in g.producers))


def _group(model: nn.Module, name: str, producers: list[str], consumers: list[str]) -> UnitGroup:
    size = model.get_submodule(producers[0]).weight.shape[0]
    if isinstance(model.get_submodule(consumers[-1]), nn.Identity):  # a headless encoder has no fc to feed
        consumers = consumers[:-1]
    return UnitGroup(name, size, tuple(producers), tuple(consumers))


def tensor_axes(model: nn.Module, groups: list[UnitGroup]) -> dict[str, list[tuple[int, str]]]:
    """For every state-dict tensor touched by a group: the (dim, group name) pairs that index it."""
    axes: dict[str, list[tuple[int, str]]] = {}
    for g in groups:
        for mod in g.producers:
            for key, _ in model.get_submodule(mod).state_dict().items():
                if key != "num_batches_tracked":
                    axes.setdefault(f"{mod}.{key}", []).append((0, g.name))
        for mod in g.consumers:
            axes.setdefault(f"{mod}.weight", []).append((1, g.name))
    return axes


# ----------------------------------------------------------------------------- sub-networks


@dataclass
class SubNetwork:
    """Per group, the sorted kept unit indices (Omega) in the backbone's numbering."""

    kept: dict[str, np.ndarray]
    sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, idx in self.kept.items():
            idx = np.unique(np.asarray(idx, dtype=np.int64))
            if idx.size == 0:
                raise ConfigError(f"group {name} would keep no units; use a smaller pruning ratio")
            if name in self.sizes and (idx[0] < 0 or idx[-1] >= self.sizes[name]):
                raise ConfigError(f"group {name}: kept indices outside 0..{self.sizes[name] - 1}")
            self.kept[name] = idx

    @classmethod
    def full(cls, groups: list[UnitGroup]) -> SubNetwork:
        return cls({g.name: np.arange(g.size) for g in groups}, {g.name: g.size for g in groups})

    @property
    def names(self) -> list[str]:
        return list(self.kept)

    def widths(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.kept.items()}

    def kept_fraction(self) -> float:
        """Kept units over all units, across groups."""
        return sum(len(v) for v in self.kept.values()) / sum(self.sizes[k] for k in self.kept)

    def compose(self, local: Mapping[str, np.ndarray]) -> SubNetwork:
        """A sub-network of this one: ``local`` indexes this sub-network's kept units."""
        return SubNetwork({k: v[np.asarray(local[k])] for k, v in self.kept.items()}, dict(self.sizes))

    def iou(self, other: SubNetwork) -> dict[str, float]:
        """Per-group intersection over union of the kept sets."""
        return {
            k: len(np.intersect1d(v, other.kept[k])) / len(np.union1d(v, other.kept[k])) for k, v in self.kept.items()
        }

    def to_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"omega.{k}": torch.as_tensor(v) for k, v in self.kept.items()}
        out |= {f"size.{k}": torch.tensor([n]) for k, n in self.sizes.items()}
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> SubNetwork:
        kept = {k[len("omega."):]: v.numpy() for k, v in tensors.items() if k.startswith("omega.")}
        sizes = {k[len("size."):]: int(v[0]) for k, v in tensors.items() if k.startswith("size.")}
        return cls(kept, sizes)


def target_widths(groups: list[UnitGroup], ratio: float) -> dict[str, int]:
    """Units kept per group at pruning ratio ``ratio``: round((1 - r) * n), never zero."""
    if not 0 < ratio < 1:
        raise ConfigError(f"pruning ratio must be in (0, 1), got {ratio}")
    widths = {}
    for g in groups:
        keep = round((1 - ratio) * g.size)
        if keep < 1:
            raise ConfigError(f"ratio {ratio} would prune group {g.name} ({g.size} units) to zero; use a smaller ratio")
        widths[g.name] = keep
    return widths


def _slice(module: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> nn.Module:
    """A copy of a Conv2d / BatchNorm2d / Linear with only the given output and input channels."""
    if isinstance(module, nn.Conv2d):
        w = module.weight.detach()
        w = w if out_idx is None else w[out_idx]
        w = w if in_idx is None else w[:, in_idx]
        new = nn.Conv2d(w.shape[1], w.shape[0], module.kernel_size, module.stride, module.padding, module.dilation, bias=module.bias is not None)
        new.weight.data.copy_(w)
        if module.bias is not None:
            new.bias.data.copy_(module.bias.detach() if out_idx is None else module.bias.detach()[out_idx])
    elif isinstance(module, nn.BatchNorm2d):
        n = len(out_idx) if out_idx is not None else module.num_features
        new = nn.BatchNorm2d(n, module.eps, module.momentum, module.affine, module.track_running_stats)
        for key in ("weight", "bias", "running_mean", "running_var"):
            src = getattr(module, key)
            getattr(new, key).data.copy_(src.detach() if out_idx is None else src.detach()[out_idx])
        new.num_batches_tracked.copy_(module.num_batches_tracked)
    elif isinstance(module, nn.Linear):
        w = module.weight.detach()
        w = w if out_idx is None else w[out_idx]
        w = w if in_idx is None else w[:, in_idx]
        new = nn.Linear(w.shape[1], w.shape[0], bias=module.bias is not None)
        new.weight.data.copy_(w)
        if module.bias is not None:
            new.bias.data.copy_(module.bias.detach() if out_idx is None else module.bias.detach()[out_idx])
    else:
        raise ConfigError(f"cannot slice a {type(module).__name__}")
    return new.to(module.weight.device if hasattr(module, "weight") else "cpu").train(module.training)


def shrink(model: ResNet, keep: Mapping[str, np.ndarray], groups: list[UnitGroup] | None = None) -> ResNet:
    """A physically smaller copy of ``model`` keeping, per group, the units ``keep[name]``
    (indices in ``model``'s *current* numbering). The model passed in is not modified."""
    groups = groups or unit_groups(model)
    out_idx: dict[str, torch.Tensor] = {}
    in_idx: dict[str, torch.Tensor] = {}
    for g in groups:
        idx = torch.as_tensor(np.asarray(keep[g.name]), dtype=torch.long)
        if idx.numel() == 0:
            raise ConfigError(f"group {g.name} would keep no units")
        for p in g.producers:
            out_idx[p] = idx
        for c in g.consumers:
            in_idx[c] = idx
    small = copy.deepcopy(model)
    for name in set(out_idx) | set(in_idx):
        parent, _, attr = name.rpartition(".")
        holder = small.get_submodule(parent) if parent else small
        setattr(holder, attr, _slice(model.get_submodule(name), out_idx.get(name), in_idx.get(name)))
    small.num_features = small.fc.in_features if isinstance(small.fc, nn.Linear) else len(in_idx.get("fc", []))
    return small


def extract(backbone: ResNet, subnet: SubNetwork) -> ResNet:
    """The physically small module of ``subnet`` with the backbone's weights at Omega."""
    return shrink(backbone, subnet.kept)


@torch.no_grad()
def mask(backbone: ResNet, subnet: SubNetwork) -> ResNet:
    """A full-size copy of ``backbone`` whose dropped units output exactly zero (BN scale and shift
    set to 0). In eval mode its outputs equal those of :func:`extract`."""
    masked = copy.deepcopy(backbone)
    for g in unit_groups(backbone):
        dropped = torch.as_tensor(np.setdiff1d(np.arange(g.size), subnet.kept[g.name]), dtype=torch.long)
        for norm in g.norms:
            bn = masked.get_submodule(norm)
            bn.weight[dropped] = 0.0
            bn.bias[dropped] = 0.0
    return masked


def dense_view(backbone_state: Mapping[str, torch.Tensor], subnet: SubNetwork, compact_state: Mapping[str, torch.Tensor], axes: Mapping[str, list[tuple[int, str]]]) -> dict[str, torch.Tensor]:
    """The backbone's state dict with the sub-network's weights written in at Omega.

    Tensors of the body only: the task head (``fc``) has task-specific rows and is left out.
    """
    dense = {}
    for key, full in backbone_state.items():
        if key.startswith("fc.") or key not in compact_state:
            continue
        out = full.clone()
        index: list[torch.Tensor | slice] = [slice(None)] * full.ndim
        for dim, group in axes.get(key, []):
            index[dim] = torch.as_tensor(subnet.kept[group])
        if len([i for i in index if isinstance(i, torch.Tensor)]) == 2:  # conv weight indexed on both axes
            out[index[0][:, None], index[1][None, :]] = compact_state[key].to(out.device)
        else:
            out[tuple(index)] = compact_state[key].to(out.device)
        dense[key] = out
    return dense


# ----------------------------------------------------------------------------- importance


class Importance:
    """Scores every unit of every group of a (possibly already pruned) model on some batches.

    Subclasses implement ``__call__(model, groups, batches) -> {group name: scores}``, one
    score per current unit, higher = more important. Criteria act on the BatchNorm producers.
    """

    name = "base"
    needs_grad = False

    def __call__(self, model: ResNet, groups: list[UnitGroup], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class ActivationImportance(Importance):
    """Mean post-ReLU activation of each channel over the data (Molchanov et al. 2016), summed over
    the BatchNorms that produce a group's units. The paper's default criterion."""

    name = "activation"

    @torch.no_grad()
    def __call__(self, model, groups, batches):
        model.eval()
        sums: dict[str, torch.Tensor] = {}

        def hook(name):
            def record(_module, _inp, out):
                s = F.relu(out).float().mean((0, 2, 3))
                sums[name] = sums.get(name, 0) + s
            return record

        handles = [model.get_submodule(n).register_forward_hook(hook(n)) for g in groups for n in g.norms]
        try:
            for x, _ in batches:
                model(x.to(next(model.parameters()).device))
        finally:
            for h in handles:
                h.remove()
        return {g.name: sum(sums[n] for n in g.norms).cpu() for g in groups}


class TaylorImportance(Importance):
    """First-order Taylor importance (Molchanov et al. 2019): (gamma * dL/dgamma + beta * dL/dbeta)^2
    of each channel's BatchNorm, accumulated over batches and summed over a group's producers."""

    name = "taylor"
    needs_grad = True

    def __call__(self, model, groups, batches):
        model.eval()  # gradients without updating BatchNorm statistics
        scores = {g.name: torch.zeros(g.size) for g in groups}
        device = next(model.parameters()).device
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            for g in groups:
                for n in g.norms:
                    bn = model.get_submodule(n)
                    scores[g.name] += ((bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).detach() ** 2).cpu()
        model.zero_grad(set_to_none=True)
        return scores


class RandomImportance(Importance):
    """Uniform random scores: the control criterion."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model, groups, batches):
        return {g.name: torch.rand(g.size, generator=self.generator) for g in groups}


IMPORTANCES = {"activation": ActivationImportance, "taylor": TaylorImportance, "random": RandomImportance}


def get_importance(name: str) -> Importance:
    if name not in IMPORTANCES:
        raise ConfigError(f"unknown importance {name!r}; choose from {', '.join(IMPORTANCES)}")
    return IMPORTANCES[name]()


def keep_top(scores: Mapping[str, torch.Tensor], widths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Per group, the sorted indices of the ``widths[name]`` highest scores (ties: lower index)."""
    keep = {}
    for name, s in scores.items():
        order = torch.argsort(-s.double(), stable=True)[: widths[name]]
        keep[name] = np.sort(order.numpy())
    return keep


def pruning_schedule(sizes: Mapping[str, int], targets: Mapping[str, int], step_fraction: float) -> list[dict[str, int]]:
    """Widths after each pruning step: every step removes ``step_fraction`` of each group's
    remaining units (at least one) until the group reaches its target width."""
    if not 0 < step_fraction <= 1:
        raise ConfigError(f"step fraction must be in (0, 1], got {step_fraction}")
    steps, current = [], dict(sizes)
    while any(current[k] > targets[k] for k in current):
        current = {k: max(targets[k], min(n - 1, math.floor(n * (1 - step_fraction)))) if n > targets[k] else n for k, n in current.items()}
        steps.append(dict(current))
    return steps


# ----------------------------------------------------------------------------- IFP


@dataclass
class PruneResult:
    """What every pruning method returns: the compact model with its task head, Omega, and costs."""

    model: ResNet
    subnet: SubNetwork
    costs: Costs
    accuracy: float
    method: str
    params: dict


def task_head(model: ResNet, data: TaskData, head_rows: list[int] | None) -> None:
    """Give ``model`` the task's head: rows of the pre-trained head when it knows every class,
    otherwise class-mean feature imprinting from the task's training images."""
    if head_rows is not None and isinstance(model.fc, nn.Linear):
        replace_head(model, data.task.n_way, head_rows)
    else:
        imprint_head(model, data.train_images, data.train_labels, data.task.n_way)


def ifp(
    backbone: ResNet,
    data: TaskData,
    ratio: float = 0.9,
    iterations: int = 1000,
    lr: float = 0.005,
    batch_size: int = 128,
    importance: str | Importance = "activation",
    step_fraction: float = 0.2,
    prune_until: float = 0.6,
    importance_batches: int = 2,
    head_rows: list[int] | None = None,
    progress: bool = False,
) -> PruneResult:
    """Iterative filter pruning (the paper's Algorithm 2) of ``backbone`` for one task.

    SGD (momentum 0.9, cosine-annealed ``lr``) runs ``iterations`` steps. Every ``h`` steps each
    group loses ``step_fraction`` of its remaining units, the least important first, and the model
    is physically shrunk, so later steps cost less; ``h`` spreads the pruning steps over the
    first ``prune_until`` of the run, and the rest fine-tunes the final sub-network. Defaults are
    the paper's (r = 0.9, J = 1000, lr 0.005, batch 128); p = 0.2 and h are ours: at r = 0.9 that
    is 11 pruning steps, one every 54 iterations, pruning done by iteration 600.
    """
    if iterations < 0:
        raise ConfigError(f"iterations must be >= 0, got {iterations}")
    if not 0 < prune_until <= 1:
        raise ConfigError(f"prune_until must be in (0, 1], got {prune_until}")
    criterion = get_importance(importance) if isinstance(importance, str) else importance
    costs = Costs()
    with Timer() as timer:
        model = copy.deepcopy(backbone)
        task_head(model, data, head_rows)
        groups = unit_groups(model)
        subnet = SubNetwork.full(groups)
        steps = pruning_schedule({g.name: g.size for g in groups}, target_widths(groups, ratio), step_fraction)
        every = max(1, math.floor(prune_until * iterations / max(len(steps), 1)))
        prune_at = {every * (k + 1): widths for k, widths in enumerate(steps)}
        device = next(model.parameters()).device
        batches = iter(data.loader(batch_size, device=device))
        imp_batches = BatchLoader(data.train_images, data.train_labels, min(batch_size, len(data.train_labels)), Augment.none(),
                                  data.task.seed + 1, device)
        imp_iter = iter(imp_batches)
        optimizer = sgd(model, lr)
        bar = tqdm(total=iterations, desc=f"IFP {data.task.id}", unit="it", disable=not progress, leave=False)
        done = 0
        checkpoints = sorted(t for t in prune_at if t < iterations) + [iterations]
        for t in checkpoints:
            train_steps(model, batches, optimizer, t - done, lambda s: cosine_lr(s, iterations, lr), start=done, progress=bar)
            costs.add_steps(model, t - done, batch_size)
            done = t
            if t in prune_at:
                model, subnet, groups = _prune_step(model, subnet, groups, criterion, imp_iter, importance_batches, prune_at[t], costs, imp_batches.batch_size)
                optimizer = sgd(model, lr)
        for widths in (prune_at[t] for t in sorted(prune_at) if t >= iterations):  # budget too short: finish pruning
            model, subnet, groups = _prune_step(model, subnet, groups, criterion, imp_iter, importance_batches, widths, costs, imp_batches.batch_size)
        bar.close()
        accuracy = evaluate(model, data.test_images, data.test_labels)
    costs.seconds = timer.seconds
    params = {"ratio": ratio, "iterations": iterations, "lr": lr, "batch_size": batch_size, "importance": criterion.name,
              "step_fraction": step_fraction, "prune_every": every, "pruning_steps": len(steps)}
    return PruneResult(model, subnet, costs, accuracy, "ifp", params)


def _prune_step(model, subnet, groups, criterion, batches, n_batches, widths, costs, batch_size):
    """Score, keep the top units per group, physically shrink; importance passes count as costs."""
    scores = criterion(model, groups, (next(batches) for _ in range(n_batches)))
    if not isinstance(criterion, RandomImportance):
        costs.add_steps(model, n_batches, batch_size, backward=criterion.needs_grad, training=False)
    keep = keep_top(scores, widths)
    small = shrink(model, keep, groups)
    return small, subnet.compose(keep), unit_groups(small)
