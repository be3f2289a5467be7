"""Training loop, evaluation and cost accounting (FLOPs measured, never estimated by hand).

Every method in metavote reports the same three costs: training FLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` on one real step of each architecture it trained,
wall-clock seconds, and test accuracy.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from .data import iterate_eval
from .errors import ConfigError
from .models import Backbone


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as ``taskset`` or a container sets it),
    not every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity API (macOS)
        return os.cpu_count() or 1


def free_cores(sample: float = 0.1) -> int:
    """The cores of this process's affinity that other processes leave idle, sampled from
    ``/proc/stat`` over ``sample`` seconds (at least 1; every available core where there is no
    ``/proc``). Intra-op threads that outnumber the free cores wait for the busy ones at every
    operator: measured beside one busy process on 2 cores, ``prune`` took 13.8 s on 2 threads and
    10.1 s on 1 (docs/benchmarks/deployment.md, "A busy machine")."""
    cores = available_cores()
    try:
        allowed = os.sched_getaffinity(0)
        before = _cpu_times(allowed)
        time.sleep(sample)
        after = _cpu_times(allowed)
    except (AttributeError, OSError, ValueError):
        return cores
    busy = sum(1 - (i1 - i0) / max(t1 - t0, 1) for (i0, t0), (i1, t1) in zip(before, after))
    return max(1, min(cores, round(len(before) - busy)))


def _cpu_times(cores: set[int]) -> list[tuple[int, int]]:
    """(idle + iowait, total) jiffies of each of ``cores``, from ``/proc/stat``."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu" and int(name[3:]) in cores:
                values = [int(v) for v in fields[:8]]
                out.append((values[3] + values[4], sum(values)))
    return out


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` intra-op threads (default: ``$METAVOTE_THREADS``, else the cores other
    processes leave free, :func:`free_cores`); returns the count."""
    n = threads or int(os.environ.get("METAVOTE_THREADS", 0)) or free_cores()
    torch.set_num_threads(n)
    return n


def select_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4, nesterov: bool = True) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum; no weight decay on BatchNorm and bias parameters."""
    return torch.optim.SGD(_decay_groups(model, lr, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def adamw(model: nn.Module, lr: float, weight_decay: float = 0.05) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (timm's and DeiT's recipe for ViTs)."""
    return torch.optim.AdamW(_decay_groups(model, lr, weight_decay), lr=lr)


def _decay_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Parameter groups with weight decay on weight matrices and none on norms and biases."""
    if lr <= 0:
        raise ConfigError(f"learning rate must be > 0, got {lr}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


OPTIMIZERS = {"sgd": sgd, "adamw": adamw}


def make_optimizer(model: nn.Module, name: str, lr: float) -> torch.optim.Optimizer:
    """An optimizer by name: ``sgd`` (Nesterov momentum 0.9, weight decay 5e-4: the CNN recipe) or
    ``adamw`` (weight decay 0.05 on matrices: the ViT recipe)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](model, lr)


def cosine_lr(step: int, total: int, base_lr: float, final_fraction: float = 0.0) -> float:
    """Cosine annealing from ``base_lr`` at step 0 to ``base_lr * final_fraction`` at ``total``."""
    t = min(step, total) / max(total, 1)
    return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ----------------------------------------------------------------------------- costs


def _input_size(model: nn.Module) -> tuple[int, ...]:
    return tuple(getattr(model, "input_size", (3, 32, 32)))


def step_flops(model: nn.Module, batch_size: int = 128, backward: bool = True, input_size: tuple[int, ...] | None = None) -> int:
    """FLOPs of one training step (forward + backward; forward only with ``backward=False``) of
    ``model`` at this batch size on its own input size (``model.input_size``), counted by
    ``FlopCounterMode`` on a copy of the model (its BatchNorm statistics are not touched)."""
    probe = copy.deepcopy(model).train()
    if not backward:  # torch's FLOP counter fails on a module that returns a bare trainable parameter under no_grad (Perceiver's)
        probe.requires_grad_(False)
    device = next(probe.parameters()).device
    x = torch.rand(batch_size, *(input_size or _input_size(model)), device=device)
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(backward):
        out = probe(x)
        if backward:
            out.float().sum().backward()
    return int(counter.get_total_flops())


@dataclass
class Costs:
    """Training FLOPs and seconds spent, accumulated over every phase of a method."""

    flops: int = 0
    seconds: float = 0.0
    iterations: int = 0
    _flops_cache: dict = field(default_factory=dict, repr=False)

    def add_steps(self, model: nn.Module, steps: int, batch_size: int, backward: bool = True, training: bool = True) -> None:
        """Count the FLOPs of ``steps`` passes of ``model`` as it is now, forward + backward (or
        forward only, ``backward=False``), on the model's own input size. FLOPs are measured once per
        distinct cost: the cache key is the model's ``flops_key()`` (its parameter shapes, plus
        whatever else its cost depends on), the input size, batch size and direction. Only
        ``training`` passes (optimiser steps) count as iterations; scoring passes add FLOPs alone."""
        if steps <= 0:
            return
        shape_key = model.flops_key() if hasattr(model, "flops_key") else tuple((k, tuple(p.shape)) for k, p in model.named_parameters())
        trainable = tuple(p.requires_grad for p in model.parameters()) if backward else ()  # frozen blocks: no backward
        key = (type(model).__name__, shape_key, trainable, _input_size(model), batch_size, backward)
        if key not in self._flops_cache:
            self._flops_cache[key] = step_flops(model, batch_size, backward)
        self.flops += self._flops_cache[key] * steps
        if training:
            self.iterations += steps

    @property
    def tflops(self) -> float:
        return self.flops / 1e12


# ----------------------------------------------------------------------------- loops


def optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                   penalty: Callable[[], torch.Tensor] | None = None, before_step: Callable[[], None] | None = None) -> torch.Tensor:
    """One training step: the forward pass (bf16 autocast on CUDA), ``loss_fn(logits, y)``
    (default cross-entropy) plus ``penalty()``, backward, ``before_step()`` (gradient surgery: masks,
    penalties, clipping), the optimizer step. Returns the loss, detached (no device sync)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
        logits = model(x)
        loss = loss_fn(logits, y) if loss_fn is not None else F.cross_entropy(logits, y)
    if penalty is not None:
        loss = loss + penalty()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if before_step is not None:
        before_step()
    optimizer.step()
    return loss.detach()


def train_steps(
    model: nn.Module,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    steps: int,
    lr_at: Callable[[int], float] | None = None,
    start: int = 0,
    device: torch.device | None = None,
    progress=None,
) -> float:
    """Run ``steps`` SGD steps (cross-entropy) from global step ``start``; returns the mean loss.

    ``lr_at(global_step)`` sets the learning rate before each step; ``progress`` (a tqdm bar)
    is advanced by one per step. On CUDA the forward pass runs under bf16 autocast.
    """
    device = device or next(model.parameters()).device
    model.train()
    total = 0.0
    for i in range(steps):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if lr_at is not None:
            set_lr(optimizer, lr_at(start + i))
        loss = optimizer_step(model, optimizer, x, y)
        total += loss.item()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return total / max(steps, 1)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data, batches: int, batch_size: int, seed: int = 0, costs: Costs | None = None) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` augmented training batches
    of the task (forward passes only, counted in ``costs``); weights are untouched."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batches <= 0 or not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    model.train()
    it = iter(data.loader(batch_size, seed=seed, device=next(model.parameters()).device))
    for _ in range(batches):
        model(next(it)[0])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    if costs is not None:
        costs.add_steps(model, batches, batch_size, backward=False, training=False)


@contextlib.contextmanager
def frozen(model: Backbone, fraction: float) -> Iterator[int]:
    """Within the block, the first ``fraction`` of the body's blocks (:meth:`Backbone.body_blocks`,
    from the input; rounded) get no gradient, so a step neither updates them nor back-propagates
    through them (:class:`Costs` counts the cheaper steps). Yields how many blocks are frozen."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"the frozen fraction must be in [0, 1), got {fraction}")
    blocks = model.body_blocks() if fraction else []
    params = [p for block in blocks[: round(fraction * len(blocks))] for p in block if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield round(fraction * len(blocks))
    finally:
        for p in params:
            p.requires_grad_(True)


def finetune(model: nn.Module, data, iterations: int, lr: float, batch_size: int, seed: int | None = None,
             costs: Costs | None = None, desc: str = "fine-tune", progress: bool = False, optimizer: str = "sgd") -> float:
    """Fine-tune ``model`` on a task's training data (a :class:`~metavote.data.TaskData`) for
    ``iterations`` steps of ``optimizer`` (:func:`make_optimizer`) with a cosine-annealed ``lr``, count
    them in ``costs``; returns the mean training loss (nan for no steps)."""
    if iterations < 0:
        raise ConfigError(f"iterations must be >= 0, got {iterations}")
    batches = iter(data.loader(batch_size, seed=seed, device=next(model.parameters()).device))
    loss = float("nan")
    if iterations:
        with tqdm(total=iterations, desc=desc, unit="it", disable=not progress, leave=False) as bar:
            loss = train_steps(model, batches, make_optimizer(model, optimizer, lr), iterations, lambda s: cosine_lr(s, iterations, lr),
                               progress=bar)
    if costs is not None:
        costs.add_steps(model, iterations, batch_size)
    return loss


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 500) -> torch.Tensor:
    """Logits of a uint8 HWC image array, in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    outs = [model(x.to(device)).float().cpu() for x, _ in iterate_eval(images, np.zeros(len(images), np.int64), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy (0..1) of ``model`` on a uint8 image array."""
    if len(images) == 0:
        raise ConfigError("cannot evaluate on an empty split")
    logits = predict(model, images, batch_size)
    return float((logits.argmax(1) == torch.as_tensor(labels)).float().mean())


class Timer:
    """``with Timer() as t: ...; t.seconds`` — wall time of a block."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start



@torch.no_grad()
def imprint_head(model: Backbone, images: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int = 100) -> None:
    """Give ``model`` a class-mean feature imprinting head: row c is the normalised mean feature of
    class c (at most ``per_class`` images each), scaled so logits have the spread of a trained head."""
    labels = np.asarray(labels)
    pick = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)])
    device = next(model.parameters()).device
    model.eval()
    feats = torch.cat([model.features(x.to(device)).float() for x, _ in iterate_eval(images[pick], labels[pick])])
    y = torch.as_tensor(labels[pick], device=device)
    means = torch.stack([feats[y == c].mean(0) for c in range(num_classes)])
    scale = 10.0 / feats.norm(dim=1).mean().clamp_min(1e-6)
    head = nn.Linear(feats.shape[1], num_classes).to(device)
    head.weight.copy_(F.normalize(means, dim=1) * scale)
    head.bias.zero_()
    model.set_classifier(head)


@torch.no_grad()
def latency(model: nn.Module, batch_size: int = 128, repeats: int = 5) -> float:
    """Median seconds of one eval-mode forward pass of a batch (after one warm-up pass)."""
    model.eval()
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    x = torch.rand(batch_size, *_input_size(model), device=device)
    model(x)
    times = []
    for _ in range(repeats):
        sync()
        with Timer() as t:
            model(x)
            sync()
        times.append(t.seconds)
    return float(np.median(times))
