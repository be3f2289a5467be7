"""Budget profiles: one named budget answers ``--profile`` everywhere.

A profile fixes the pruning ratio r, the budget J of a new task's pruning (MVP, random, ...), the
batch size and the learning rate. Conventional pruning (IFP: how the zoo is built, and the bench's
upper bound) runs ``conventional_factor`` · J iterations, with its own settings where the paper
gives them (``method_settings``). So ``zoo build --profile cpu`` and the CPU bench's upper bound are
the same recipe, and the bench's records compare with the zoo's.

| profile | family | r | J | conventional (10 J) | batch | lr |
|---|---|---:|---:|---:|---:|---:|
| ``paper`` | ResNet | 0.9 | 100 | IFP 1000, lr 0.005 | 128 | 0.01 (SGD) |
| ``cpu`` | ResNet | 0.8 | 20 | IFP 200 | 64 | 0.01 (SGD) |
| ``vit-paper`` | ViT | 0.9 | 100 | AHNP 1000, lr 5e-4 | 128 | 2e-4 (AdamW) |
| ``vit-cpu`` | ViT | 0.8 | 20 | AHNP 200, lr 5e-4 | 64 | 2e-4 (AdamW) |
| ``lite0-cpu`` | EfficientNet-Lite0, ImageNet weights, 96 px | 0.8 | 20 | Torch-Pruning Taylor 200 | 64 | 0.01 (SGD) |

``cpu`` is for 2 CPU cores and the width-0.5 backbone: r = 0.8 keeps 6–51 channels per layer, the
widths the paper's r = 0.9 keeps at width 1.0. ``vit-cpu`` is for the small CIFAR ViT (192 wide,
half of ViT-S, with half its MLP ratio) on 2 CPU cores, by the same reasoning: r = 0.8. The ViT
settings are the paper's: AHNP with AdamW at 5e-4 (scores 5e-2), MVP fine-tuned with AdamW at 2e-4.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    ratio: float
    iterations: int
    batch_size: int
    lr: float
    conventional_factor: int = 10
    conventional: tuple[str, ...] = ("ifp",)
    method_settings: dict[str, dict] = field(default_factory=dict)
    extra: tuple[str, ...] = ()  # more methods at J in the bench's table (baselines)
    peers: tuple[str, ...] = ("tp-magnitude", "tp-taylor", "tp-iterative")  # what users run instead: the bench runs each at J and 10 J
    conventional_at_j: bool = True  # the table also runs conventional pruning at J (the paper's Table 1 does, Table 2 does not)
    backbone: str | None = None  # the backbone this profile is for, when it names one (``zoo build --profile`` uses it by default)
    image_size: int | None = None  # the input size its backbone runs at (None: the model's own)

    @property
    def upper_bound(self) -> str:
        """The conventional method: how this profile's zoo is built and the bench's upper bound."""
        return self.conventional[0]

    def settings(self, method: str, **overrides) -> dict:
        """Keyword settings of ``method`` (a registry key) under this profile, ``overrides`` on top
        (``None`` ignored). Conventional methods run ``conventional_factor`` · J unless told otherwise."""
        base = {"ratio": self.ratio, "iterations": self.iterations, "batch_size": self.batch_size, "lr": self.lr}
        if method in self.conventional:
            base["iterations"] = self.conventional_factor * self.iterations
        base |= self.method_settings.get(method, {})
        return base | {k: v for k, v in overrides.items() if v is not None}

    def replace(self, **overrides) -> Profile:
        """This profile with some budget fields changed (``None`` ignored). A new ``lr`` applies to
        every method (the per-method learning rates are dropped); ``temperature`` is MVP's tau."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        fields = {"ratio", "iterations", "batch_size", "lr", "temperature"}
        unknown = set(overrides) - fields
        if unknown:
            raise ConfigError(f"unknown budget setting(s) {', '.join(sorted(unknown))}; a profile has {', '.join(sorted(fields))}")
        if not overrides:
            return self
        per_method = self.method_settings
        if "lr" in overrides:
            per_method = {m: {k: v for k, v in s.items() if k != "lr"} for m, s in per_method.items()}
        if "temperature" in overrides:
            per_method = per_method | {"mvp": per_method.get("mvp", {}) | {"temperature": overrides.pop("temperature")}}
        return dataclasses.replace(self, method_settings=per_method, **overrides)


# the paper's Table 1 rows beside MVP, IFP and random: random pruning as the paper ran it, IHT-based Reptile, MEST, DLTH
CNN_BASELINES = ("random-paper", "iht-reptile", "mest", "dlth")
# the paper's Table 2 rows beside MVP, AHNP and random: UVC, PoWER, and random pruning as the paper ran it
VIT_BASELINES = ("uvc", "power", "random-paper")
# a ViT's fine-tuning methods train with AdamW (the peer's pipelines too: the same recipe after the cut)
VIT_ADAMW = {key: {"optimizer": "adamw"} for key in ("mvp", "nearest", "random", "random-paper", "tp-magnitude", "tp-taylor", "tp-iterative")}

PROFILES: dict[str, Profile] = {
    # the paper: r = 0.9, MVP J = 100 at batch 128, IFP at 10·J = 1000 with lr 0.005 (GPU scale)
    "paper": Profile("paper", ratio=0.9, iterations=100, batch_size=128, lr=0.01, method_settings={"ifp": {"lr": 0.005}},
                     extra=CNN_BASELINES),
    # 2 CPU cores, width-0.5 backbone: r = 0.8, MVP J = 20 at batch 64, IFP at 10·J = 200 (8 gradual
    # pruning steps, one every 15 iterations)
    "cpu": Profile("cpu", ratio=0.8, iterations=20, batch_size=64, lr=0.01, extra=CNN_BASELINES),
    # ViTs: AHNP builds the zoo (AdamW, weights 5e-4, scores 5e-2); MVP, the nearest record and random fine-tune with AdamW at 2e-4
    "vit-paper": Profile("vit-paper", ratio=0.9, iterations=100, batch_size=128, lr=2e-4, conventional=("ahnp",),
                         method_settings={"ahnp": {"lr": 5e-4}} | VIT_ADAMW, extra=VIT_BASELINES, conventional_at_j=False),
    # 2 CPU cores, the small CIFAR ViT: r = 0.8, J = 20 at batch 64, AHNP at 10·J = 200 (about 65 s a task on 2 threads)
    "vit-cpu": Profile("vit-cpu", ratio=0.8, iterations=20, batch_size=64, lr=2e-4, conventional=("ahnp",),
                       method_settings={"ahnp": {"lr": 5e-4}} | VIT_ADAMW, extra=VIT_BASELINES, conventional_at_j=False),
    # EfficientNet-Lite0 with its ImageNet weights (--backbone efficientnet-lite0) at 96 px on 2 CPU cores: r = 0.8, J = 20 at
    # batch 64, its conventional method at 10·J = 200 (a dense training step costs 0.96 s at 96 px, 2.05 s at 128, 11.6 s at 224;
    # the r = 0.8 model 0.15 s at 96: benchmarks/real-model/lite0_step_cost.py). That method, which builds its zoo, is Torch-Pruning
    # Taylor, not IFP: at 200 steps on 3 test tasks Taylor reached 70.7 % where IFP reached 57.9 %, for a quarter of the FLOPs
    # (3.8 against 16.6 TFLOPs; benchmarks/real-model/lite0_table.py), and its ranking is the task's own (Omega differs by task,
    # unlike magnitude's).
    # IFP stays in the table beside the other pipelines.
    "lite0-cpu": Profile("lite0-cpu", ratio=0.8, iterations=20, batch_size=64, lr=0.01, backbone="efficientnet-lite0", image_size=96,
                         conventional=("tp-taylor",), peers=("tp-magnitude", "ifp", "tp-iterative")),
}


def get_profile(name: str | Profile, **overrides) -> Profile:
    """A profile by name, with budget overrides (``ratio``, ``iterations``, ``batch_size``, ``lr``)."""
    if isinstance(name, Profile):
        return name.replace(**overrides)
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[name].replace(**overrides)


def ratio_for(n_way_ratio: float, profile: str) -> float:
    """The paper's ratio for a task size, mapped to a profile: at width 0.5 (``cpu``) keeping twice
    the fraction keeps the same channel counts, so r_cpu = 1 - 2 (1 - r)."""
    return n_way_ratio if profile == "paper" else round(1 - 2 * (1 - n_way_ratio), 4)
