"""One base class for every pruning method, and the registry that names them.

A method is a dataclass of keyword-only, well-named settings (``ratio``, ``iterations``, ``lr``,
``batch_size``, ``seed`` and its own) with a ``key`` (its registry name and zoo record suffix), the
model capabilities it ``requires`` (unit groups, importance probes, attention heads, tokens:
:meth:`~metavote.models.Backbone.capabilities`) and whether it ``needs_zoo``. One call runs it::

    method = create_method("mvp", ratio=0.8, iterations=20, batch_size=64)
    result = method.run(backbone, task_data, zoo, head_rows)      # -> PruneResult

:meth:`Method.run` is the skeleton every method shares (checks, timer, result); a method fills in
:meth:`Method.prune` and may use :meth:`Method.fine_tune` (BatchNorm re-estimation, then J
optimizer steps) and :func:`task_head`. ``create_method`` feeds the CLI's choices, ``prune``, the bench and
``zoo build --method``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..data import TaskData
from ..errors import ConfigError
from ..models.base import Backbone, replace_head
from ..models.units import UnitGroup
from ..profiles import Profile
from ..pruning import PruneResult, SubNetwork, aligned_widths, host_aligned_widths, target_widths
from ..training import OPTIMIZERS, Costs, Timer, evaluate, finetune, imprint_head, recalibrate_bn

if TYPE_CHECKING:
    from ..zoo import Zoo


CAPABILITIES = {
    "units": "prunable unit groups", "probes": "a norm or layer to measure importance at in every group (else use magnitude importance)",
    "batchnorm": "BatchNorm layers", "heads": "attention heads", "tokens": "token pruning (metavote's own ViT)",
}
"""What each capability a method may require means (the words of the mismatch error)."""


def check_fraction(name: str, value: float) -> None:
    """A clear error unless a setting that is a share of the budget lies in (0, 1]."""
    if not 0 < value <= 1:
        raise ConfigError(f"{name} must be in (0, 1], got {value}")


def task_head(model: Backbone, data: TaskData, head_rows: list | None) -> None:
    """Give ``model`` the task's head: rows of the pre-trained head for the classes it knows
    (``head_rows``: per class a row, several rows to average, or None), class-mean feature
    imprinting from the task's training images for the others (and for all without ``head_rows``)."""
    if head_rows is None or not isinstance(model.get_classifier(), nn.Linear):
        imprint_head(model, data.train_images, data.train_labels, data.task.n_way)
        return
    unknown = [k for k, r in enumerate(head_rows) if r is None]
    if unknown:
        imprinted = copy.deepcopy(model)
        imprint_head(imprinted, data.train_images, data.train_labels, data.task.n_way)
    replace_head(model, data.task.n_way, head_rows)
    if unknown:
        with torch.no_grad():
            model.get_classifier().weight[unknown] = imprinted.get_classifier().weight[unknown].to(model.get_classifier().weight.device)
            model.get_classifier().bias[unknown] = imprinted.get_classifier().bias[unknown].to(model.get_classifier().bias.device)


@dataclass(kw_only=True)
class Method:
    """Base class: the budget every method shares.

    ``ratio`` r (fraction of each group's units removed), ``iterations`` J (optimiser steps),
    ``lr`` (peak, cosine-annealed), ``batch_size``, ``seed`` (default: the task's own seed),
    ``optimizer`` (``sgd``: the CNN recipe; ``adamw``: the ViT recipe), ``refresh_bn`` (batches on
    which BatchNorm statistics are re-estimated after the last step, before evaluation; 0 keeps the
    running averages of training, a no-op for models without BatchNorm), ``align`` (kept widths in
    multiples of this, at no more FLOPs than the ratio's: :func:`~metavote.pruning.aligned_widths`;
    8 suits ONNX Runtime's AVX2 kernels, and its AVX-512 ones too; ``"auto"``: this CPU's channel block
    where the FLOPs allow it, :func:`~metavote.pruning.host_aligned_widths`; 1 keeps round((1 - r) n)
    per group, the paper's widths).

    Why ``refresh_bn``: after a few steps the running averages lag the weights. Measured on eight
    validation tasks (seed 7, ``cpu`` profile, r = 0.8; ``benchmarks/main-tables/bn_refresh.py``), the same
    trained weights with their statistics re-estimated on 5 batches after the last step: MVP
    61.7% -> 65.9%, IFP at 200 steps 76.5% -> 76.8%, IFP at 20 28.2% -> 48.0%, random 43.8% ->
    50.5%, MEST 20.8% -> 44.1%, DLTH 20.7% -> 43.9%. Every method gets it, so the comparison stays
    like for like; the paper's random baseline does not.
    """

    key: ClassVar[str] = "method"
    name: ClassVar[str] = "method"  # how tables label it
    requires: ClassVar[frozenset[str]] = frozenset({"units"})
    needs_zoo: ClassVar[bool] = False
    builds_zoo: ClassVar[bool] = True  # its result is a sub-network of units a zoo record can keep
    aligns: ClassVar[bool] = True  # it keeps per-group widths, so ``align`` applies
    ignores: ClassVar[frozenset[str]] = frozenset()  # settings it inherits but does not use (given ones are refused by ``prune``)

    ratio: float = 0.9
    iterations: int = 100
    lr: float = 0.01
    batch_size: int = 128
    seed: int | None = None
    optimizer: str = "sgd"
    refresh_bn: int = 5
    align: int | str = 1

    def __post_init__(self) -> None:
        if self.align != "auto" and (not isinstance(self.align, int) or isinstance(self.align, bool)):
            raise ConfigError(f"align must be a whole number of channels or 'auto', got {self.align!r}")
        if not 0 < self.ratio < 1:
            raise ConfigError(f"pruning ratio must be in (0, 1), got {self.ratio}")
        if self.iterations < 0:
            raise ConfigError(f"iterations must be >= 0, got {self.iterations}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.refresh_bn < 0:
            raise ConfigError(f"refresh_bn must be >= 0, got {self.refresh_bn}")
        if self.align != "auto" and self.align < 1:
            raise ConfigError(f"align must be >= 1, got {self.align}")
        if self.align != 1 and not self.aligns:
            raise ConfigError(f"{self.key} does not choose per-group widths, so it cannot align them; leave out align")

    @property
    def label(self) -> str:
        return f"{self.name} (J={self.iterations})"

    def settings(self) -> dict[str, Any]:
        """The method's settings as plain data (what a zoo record keeps)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}

    def widths(self, model: Backbone, groups: Sequence[UnitGroup] | None = None) -> dict[str, int]:
        """Units kept per group: the ratio's widths, moved to multiples of ``align`` when it is above 1
        (``"auto"``: :func:`~metavote.pruning.host_aligned_widths`)."""
        groups = groups if groups is not None else model.unit_groups()
        widths = target_widths(groups, self.ratio)
        if self.align == "auto":
            return host_aligned_widths(model, widths, groups)
        return aligned_widths(model, widths, self.align, groups) if self.align > 1 else widths

    # -- the skeleton
    def run(self, backbone: Backbone, data: TaskData, zoo: Zoo | None = None, head_rows: list[int] | None = None,
            progress: bool = False) -> PruneResult:
        """Prune ``backbone`` for the task of ``data``; the wall time, FLOPs and accuracy go in the result.
        ``head_rows``: rows of the pre-trained head for the task's classes (None: imprint a head)."""
        self.check_model(backbone)
        if self.needs_zoo and zoo is None:
            raise ConfigError(f"{self.key} needs a zoo of pruned models (--zoo)")
        prepared = self.prepare(backbone, data, zoo, progress)
        costs = Costs()
        seed = data.task.seed if self.seed is None else self.seed
        with Timer() as timer:
            model, subnet, params = self.prune(backbone, data, zoo, head_rows, costs, seed, prepared, progress)
            recalibrate_bn(model, data, self.refresh_bn, self.batch_size, seed, costs)
            accuracy = evaluate(model, data.test_images, data.test_labels)
        costs.seconds = timer.seconds
        return PruneResult(model, subnet, costs, accuracy, self.key, self.settings() | {"seed": seed} | params)

    def requirements(self) -> set[str]:
        """The capabilities this method, with these settings, needs of a model."""
        return set(self.requires)

    def check_model(self, model: Backbone) -> None:
        """One clear line when ``model`` lacks a capability this method needs."""
        missing = sorted(self.requirements() - model.capabilities())
        if missing:
            raise ConfigError(f"{self.key} needs a model with {' and '.join(CAPABILITIES[c] for c in missing)}; "
                              f"this {type(model).__name__} has none")

    def prepare(self, backbone: Backbone, data: TaskData, zoo: Zoo | None, progress: bool = False) -> Any:
        """Untimed work before pruning (MVP's neighbour search, timed on its own)."""
        return None

    def prune(self, backbone: Backbone, data: TaskData, zoo: Zoo | None, head_rows: list[int] | None, costs: Costs, seed: int,
              prepared: Any, progress: bool) -> tuple[Backbone, SubNetwork, dict]:
        """The method itself: the compact model with its task head (trained), its Omega and extra record params."""
        raise NotImplementedError

    def fine_tune(self, model: Backbone, data: TaskData, costs: Costs, seed: int, progress: bool, bn_batches: int = 0) -> None:
        """Re-estimate BatchNorm statistics on ``bn_batches`` batches, then ``iterations`` optimizer steps."""
        recalibrate_bn(model, data, bn_batches, self.batch_size, seed, costs)
        finetune(model, data, self.iterations, self.lr, self.batch_size, seed, costs, f"{self.name} {data.task.id}", progress,
                 self.optimizer)


# ----------------------------------------------------------------------------- registry

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available to :func:`create_method` under its ``key``."""
    METHODS[cls.key] = cls
    return cls


def method_settings(key: str) -> list[str]:
    """The settings a method accepts."""
    return [f.name for f in dataclasses.fields(get_method_class(key)) if f.init]


def get_method_class(key: str) -> type[Method]:
    if key not in METHODS:
        raise ConfigError(f"unknown method {key!r}; choose from {', '.join(sorted(METHODS))}")
    return METHODS[key]


def create_method(key: str, **settings) -> Method:
    """A method by registry key with keyword settings (``None`` values mean the default)."""
    cls = get_method_class(key)
    settings = {k: v for k, v in settings.items() if v is not None}
    unknown = sorted(set(settings) - set(method_settings(key)))
    if unknown:
        raise ConfigError(f"{key} has no setting(s) {', '.join(unknown)}; it takes {', '.join(method_settings(key))}")
    return cls(**settings)




def conventional_method(model: Backbone, profile: Profile, **overrides) -> tuple[Method, str]:
    """The conventional pruner a zoo of ``model`` is built with under ``profile``, and why: the
    profile's own (IFP for the ResNet profiles, AHNP for the ViT ones) when the model has what it
    needs, else the first of AHNP (attention heads), IFP with activation importance (a norm or layer
    to measure at in every group) and IFP with magnitude importance (any units) that it can run:
    a Hugging Face ViT under a ResNet profile, a CNN under a ViT profile. ``overrides``: the
    profile's budget settings (``ratio``, ``iterations``, ``lr``, ``batch_size``) and IFP's
    ``importance`` (which names IFP)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    importance = overrides.pop("importance", None)
    candidates = [(profile.upper_bound, {}), ("ahnp", {}), ("ifp", {}), ("ifp", {"importance": "magnitude"})]
    if importance is not None:
        candidates = [("ifp", {"importance": importance})]
    caps, tried = model.capabilities(), []
    for key, extra in dict.fromkeys((k, tuple(e.items())) for k, e in candidates):
        method = create_method(key, **profile.settings(key, **overrides, **dict(extra)))
        missing = method.requirements() - caps
        if not missing:
            label = f"{key} with {dict(extra)['importance']} importance" if extra else key
            why = (f"the {profile.name} profile's conventional method" if (key, extra) == (profile.upper_bound, ())
                   else f"{label}: the {profile.name} profile's {profile.upper_bound} needs {tried[0]}, which this model lacks" if tried
                   else f"{label}, as asked")
            return method, why
        tried.append(" and ".join(CAPABILITIES[c] for c in sorted(missing)))
    raise ConfigError(f"no conventional pruner runs on this {type(model).__name__}: it lacks {tried[-1]}")
