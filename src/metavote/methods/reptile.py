"""IHT-based Reptile (Tian, Liu, Yuan and Liu, ECCV 2020, "Meta-Learning with Network Pruning"), at unit level.

One sparse meta-model is meta-trained on the zoo's tasks (never a test task), once per zoo and
settings, and cached beside the zoo (``<zoo>/meta/``); each new task fine-tunes it for J iterations
with a new head. Its meta-training cost is paid once, like the zoo's, and reported on its own.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..data import ImageDataset, Task
from ..errors import ConfigError
from ..files import atomic_path
from ..pruning import SubNetwork, extract, target_widths
from ..training import Costs, Timer, optimizer_step
from .base import Method, register
from .sparse import UnitMask, magnitude_subnetwork


@dataclass
class MetaModel:
    """The meta-trained model (full size, switched-off units zero), its sub-network and its cost."""

    model: torch.nn.Module
    subnet: SubNetwork
    tasks: list[str]
    tflops: float
    seconds: float
    cached: bool = False


@register
@dataclass(kw_only=True)
class IHTReptile(Method):
    """Reptile meta-training with iterative hard thresholding of units, then J iterations per task.

    Meta-training, on the zoo's tasks (its records' tasks of at most N classes, drawn with
    replacement, seeded; an N-way meta-head, a smaller task using its first outputs):
    ``meta_iterations`` outer steps (default: as many as make 40 J inner steps, at least 5; 20 at the
    ``cpu`` profile's J = 20), each of ``meta_batch`` tasks with ``inner_steps`` Adam steps
    (lr ``inner_lr``, beta1 = 0, the authors' inner optimiser) from the current weights; the outer
    step moves the weights toward the tasks' mean, theta <- theta + eps (mean theta' - theta), eps
    falling linearly from 1 to ``epsilon_end``. The first 20% of outer steps are dense; the rest are
    ``cycles`` cycles, each opened by hard thresholding at a rate rising r/3, 2r/3, r (per group, the
    units of smallest producing-weight norm are switched off), sparse for its first 75% (the mask is
    applied after every inner step and after the outer step) and dense for the rest (switched-off
    units regrow from a re-initialisation, not from zero filters: under BatchNorm a zero filter has
    zero variance); the last cycle is sparse throughout and ends at ratio r. The meta-head has N
    outputs (labels in sorted class order); a new task gets a new random head and ``iterations``
    steps of the profile's optimiser on the extracted sub-network.

    Adaptations, each forced by the budget or the like-for-like comparison:

    - Units, not weights: thresholding ranks each group's units by the L2 norm of their producing
      weights (filters with their BatchNorm, qkv or fc1 rows), every group at the same rate, the
      stem and streams included (the authors prune convs 2–4 and the classifier's weights); the
      task head is never pruned.
    - The schedule is the authors' shape (dense start, rising rate, sparse/dense split 75/25) at a
      budget of ``meta_iterations`` x ``meta_batch`` x ``inner_steps`` inner steps (by default
      40 J: 800 at J = 20, a tenth of the 100-task zoo's 100 x 10 J; the authors' 100k
      meta-iterations are out of reach), and it ends sparse: the published model
      ends in a dense phase, which is no pruned model.
    - A fresh Adam state for each task's inner loop (the authors' code shares one across tasks).
    - A pre-trained start: the meta-model begins as the backbone with a new N-way head.
    """

    key = "iht-reptile"
    aligns = False
    name = "IHT-Reptile"
    needs_zoo = True

    meta_iterations: int | None = None
    meta_batch: int = 5
    inner_steps: int = 8
    inner_lr: float = 1e-3
    epsilon_end: float = 0.3
    cycles: int = 3
    meta_seed: int = 0
    dataset: ImageDataset | None = field(default=None, repr=False)  # the dataset of the zoo's tasks

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.outer_steps, self.meta_batch, self.inner_steps, self.cycles) < 1:
            raise ConfigError("meta_iterations, meta_batch, inner_steps and cycles must be >= 1")
        if self.inner_lr <= 0 or not 0 < self.epsilon_end <= 1:
            raise ConfigError(f"inner_lr must be > 0 and epsilon_end in (0, 1], got {self.inner_lr} and {self.epsilon_end}")

    @property
    def outer_steps(self) -> int:
        """Meta-iterations: ``meta_iterations``, or as many as make 40 J inner steps (at least 5)."""
        if self.meta_iterations is not None:
            return self.meta_iterations
        return max(5, math.ceil(40 * self.iterations / (self.meta_batch * self.inner_steps)))

    def meta_settings(self) -> dict:
        keep = ("ratio", "batch_size", "meta_batch", "inner_steps", "inner_lr", "epsilon_end", "cycles", "meta_seed")
        return {k: getattr(self, k) for k in keep} | {"meta_iterations": self.outer_steps}

    # -- meta-training, once per zoo and settings
    def prepare(self, backbone, data, zoo, progress=False) -> MetaModel:
        if self.dataset is None or self.dataset.name != data.task.dataset:
            raise ConfigError(f"iht-reptile meta-trains on the zoo's tasks and needs their dataset ({data.task.dataset}) as its "
                              "dataset setting")
        n_way = data.task.n_way
        tasks = sorted({r.task.id: r.task for r in zoo.records(method=zoo.source_method)
                        if r.task.n_way <= n_way and r.task.dataset == self.dataset.name}.values(), key=lambda t: t.id)
        if not tasks:
            raise ConfigError(f"the zoo holds no tasks of {self.dataset.name} with at most {n_way} classes to meta-train on")
        digest = hashlib.sha256(json.dumps({"settings": self.meta_settings(), "tasks": [t.id for t in tasks], "n_way": n_way,
                                            "backbone": str(zoo.meta.get("fingerprint"))}, sort_keys=True).encode()).hexdigest()[:16]
        path = zoo.cache_dir / "meta" / f"{self.key}-{digest}.safetensors"
        if path.exists():
            return self._load(path, backbone, n_way)
        meta = self.meta_train(backbone, tasks, n_way, progress)
        self._save(path, meta)
        return meta

    def meta_train(self, backbone, tasks: list[Task], n_way: int, progress: bool = False) -> MetaModel:
        """Reptile with iterative hard thresholding on ``tasks`` (see the class docstring)."""
        model = copy.deepcopy(backbone)
        torch.manual_seed(self.meta_seed)
        model.reset_classifier(n_way)
        groups = model.unit_groups()
        rng, generator = np.random.default_rng(self.meta_seed), torch.Generator().manual_seed(self.meta_seed)
        m = self.outer_steps
        dense = math.ceil(0.2 * m)
        starts = [dense + round(c * (m - dense) / self.cycles) for c in range(self.cycles)]
        loaded: dict[str, object] = {}
        costs, mask, eps_drop = Costs(), None, (1 - self.epsilon_end) / max(m - 1, 1)
        with Timer() as timer:
            for it in tqdm(range(m), desc="IHT-Reptile meta-training", unit="meta-it", disable=not progress, leave=False):
                if it in starts:  # a mask event: threshold at this cycle's rate
                    cycle = starts.index(it)
                    widths = target_widths(groups, self.ratio * (cycle + 1) / self.cycles)
                    mask = UnitMask(model, groups, magnitude_subnetwork(model, groups, widths))
                    mask.apply()
                    end = starts[cycle + 1] if cycle + 1 < self.cycles else m
                    sparse_until = end if cycle + 1 == self.cycles else it + math.ceil(0.75 * (end - it))
                if mask is not None and it == sparse_until and it < m:  # the dense phase: switched-off units regrow
                    for g in groups:
                        mask.regrow(g, mask.off(g), None, generator, scale=1.0)
                    mask = None
                eps = 1 - eps_drop * it
                mean = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in model.state_dict().items() if v.is_floating_point()}
                for t in rng.choice(len(tasks), self.meta_batch, replace=True):
                    task = tasks[t]
                    if task.id not in loaded:
                        loaded[task.id] = self.dataset.load_task(task)
                    adapted = self._inner(model, loaded[task.id], mask, int(rng.integers(2**31)), costs)
                    for k, v in adapted.items():
                        if k in mean:
                            mean[k] += v.float() / self.meta_batch
                with torch.no_grad():
                    for k, v in model.state_dict().items():
                        if k in mean:
                            v.copy_((v.float() + eps * (mean[k] - v.float())).to(v.dtype))
                if mask is not None:
                    mask.apply()
            final = UnitMask(model, groups, magnitude_subnetwork(model, groups, target_widths(groups, self.ratio)))
            final.apply()
        return MetaModel(model, final.subnet, [t.id for t in tasks], costs.tflops, timer.seconds)

    def _inner(self, model, data, mask: UnitMask | None, seed: int, costs: Costs) -> dict[str, torch.Tensor]:
        """``inner_steps`` Adam steps on one task from the current weights; the adapted state dict."""
        local = copy.deepcopy(model).train()
        local_mask = UnitMask(local, mask.groups, mask.subnet) if mask is not None else None
        opt = torch.optim.Adam(local.parameters(), lr=self.inner_lr, betas=(0.0, 0.999))
        device = next(local.parameters()).device
        batches = iter(data.loader(self.batch_size, seed=seed, device=device))
        for _ in range(self.inner_steps):
            x, y = next(batches)
            optimizer_step(local, opt, x, y, before_step=local_mask.mask_grads if local_mask is not None else None)
            if local_mask is not None:
                local_mask.apply()
        costs.add_steps(local, self.inner_steps, self.batch_size)
        return local.state_dict()

    def _save(self, path, meta: MetaModel) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in meta.model.state_dict().items()}
        tensors |= {f"subnet.{k}": v for k, v in meta.subnet.to_tensors().items()}
        info = {"settings": json.dumps(self.meta_settings()), "tasks": json.dumps(meta.tasks), "tflops": str(meta.tflops),
                "seconds": str(meta.seconds)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=info)

    def _load(self, path, backbone, n_way: int) -> MetaModel:
        with safe_open(str(path), "pt") as f:
            header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        model = copy.deepcopy(backbone)
        model.reset_classifier(n_way)
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        subnet = SubNetwork.from_tensors({k[len("subnet."):]: v for k, v in tensors.items() if k.startswith("subnet.")})
        return MetaModel(model, subnet, json.loads(header["tasks"]), float(header["tflops"]), float(header["seconds"]), cached=True)

    # -- per task
    def prune(self, backbone, data, zoo, head_rows, costs, seed, prepared: MetaModel, progress):
        if data.task.id in prepared.tasks:
            raise ConfigError(f"task {data.task.id} is one of the tasks IHT-Reptile meta-trained on; give it a task outside the zoo")
        model = extract(prepared.model, prepared.subnet)
        torch.manual_seed(seed)
        model.reset_classifier(data.task.n_way)
        self.fine_tune(model, data, costs, seed, progress)
        return model, prepared.subnet, {"meta_tflops": prepared.tflops, "meta_seconds": prepared.seconds,
                                        "meta_tasks": len(prepared.tasks), "meta_cached": prepared.cached}
