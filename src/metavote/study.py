"""The overlap study: do similar tasks keep the same units, and more so in deep layers?

For every zoo task taken as the target, the other tasks are ranked by similarity (LEEP, WordNet
or the embedding) and cut into ``groups`` equal similarity groups (group 1 = most similar). Per
unit group (layer) l, IoU = |Omega_i ∩ Omega_j| / |Omega_i ∪ Omega_j| is averaged within each
similarity group, then over targets. The chance level is the exact expected IoU of two independent
random subsets of the same sizes.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import ImageDataset
from .errors import ConfigError
from .similarity import LEEPSimilarity, Similarity, SimilarityError, leep, softmax_outputs, target_sample
from .zoo import Zoo, ZooRecord


def chance_iou(n: int, k: int, k2: int | None = None) -> float:
    """Expected IoU of two independent uniformly random subsets of sizes k and k2 of n units
    (the intersection is hypergeometric). Two empty sets (a ViT block that lost every head) count as identical."""
    k2 = k if k2 is None else k2
    if k == k2 == 0:
        return 1.0
    if min(k, k2) == 0:
        return 0.0
    total = math.comb(n, k2)
    return sum(math.comb(k, x) * math.comb(n - k, k2 - x) / total * x / (k + k2 - x) for x in range(max(0, k + k2 - n), min(k, k2) + 1))


def iou_matrices(zoo: Zoo, records: list[ZooRecord]) -> tuple[list[str], np.ndarray, dict[str, int], np.ndarray]:
    """Per layer, the IoU of every pair of records: (layer names, array (L, T, T), sizes, kept counts (L, T))."""
    subnets = [zoo.subnetwork(r) for r in records]
    names = subnets[0].names
    sizes = subnets[0].sizes
    ious, kept = [], []
    for name in names:
        masks = np.zeros((len(subnets), sizes[name]), dtype=np.float64)
        for t, s in enumerate(subnets):
            masks[t, s.kept[name]] = 1
        inter = masks @ masks.T
        count = masks.sum(1)
        union = count[:, None] + count[None, :] - inter
        ious.append(np.divide(inter, union, out=np.ones_like(inter), where=union > 0))  # two empty sets: identical
        kept.append(count)
    return names, np.stack(ious), sizes, np.array(kept)


def similarity_matrix(zoo: Zoo, records: list[ZooRecord], dataset: ImageDataset, measure: Similarity, progress: bool = True) -> np.ndarray:
    """S[i, j] = similarity of record j (the source) to record i's task (the target); diagonal NaN.

    LEEP loads every zoo model once and runs all of them, batched, on each target's sample.
    """
    t = len(records)
    sim = np.full((t, t), np.nan)
    if isinstance(measure, LEEPSimilarity):
        models = [zoo.load(r)[0] for r in records]
        for i in tqdm(range(t), desc="LEEP", unit="target", disable=not progress, leave=False):
            data = dataset.load_task(records[i].task)
            images, labels = target_sample(data, measure.per_class)
            probs = softmax_outputs(models, images)
            y = torch.as_tensor(labels)
            for j in range(t):
                if j != i:
                    sim[i, j] = float(leep(probs[j], y, data.task.n_way))
    else:
        for i in tqdm(range(t), desc=measure.name, unit="target", disable=not progress, leave=False):
            others = [j for j in range(t) if j != i]
            sim[i, others] = measure.scores(zoo, [records[j] for j in others], dataset.load_task(records[i].task))
    return sim


@dataclass
class OverlapResult:
    metric: str
    layers: list[str]
    sizes: list[int]
    kept: list[float]
    iou: np.ndarray  # (groups, L): mean over targets of the mean IoU within the group
    iou_std: np.ndarray  # (groups, L): std over targets
    chance: np.ndarray  # (L,)
    targets: int
    notes: list[str] = field(default_factory=list)

    @property
    def gap(self) -> np.ndarray:
        """IoU(group 1) - IoU(last group) per layer."""
        return self.iou[0] - self.iou[-1]


def overlap_study(zoo: Zoo, dataset: ImageDataset, similarity: np.ndarray, metric: str, groups: int = 5, records: list[ZooRecord] | None = None) -> OverlapResult:
    """IoU of Omega per layer by similarity group, from a precomputed similarity matrix."""
    records = records if records is not None else zoo.records()
    t = len(records)
    if groups < 2:
        raise ConfigError(f"groups must be >= 2, got {groups}")
    if t - 1 < groups:
        raise SimilarityError(f"the zoo has {t} records: too few to form {groups} similarity groups")
    names, ious, sizes, kept = iou_matrices(zoo, records)
    per_target = np.zeros((t, groups, len(names)))
    for i in range(t):
        others = np.array([j for j in range(t) if j != i])
        ranked = others[np.argsort(-similarity[i, others], kind="stable")]
        for g, members in enumerate(np.array_split(ranked, groups)):
            per_target[i, g] = ious[:, i, members].mean(1)
    chance = np.array([pairwise_chance(sizes[n], counts) for n, counts in zip(names, kept)])
    return OverlapResult(metric, names, [sizes[n] for n in names], kept.mean(1).tolist(), per_target.mean(0), per_target.std(0), chance, t)


def pairwise_chance(n: int, counts: np.ndarray) -> float:
    """The chance level of a layer whose records keep different numbers of units (AHNP's do): the mean
    over record pairs of the expected IoU of random subsets of their two sizes. Equal sizes give
    :func:`chance_iou` itself."""
    counts = np.asarray(counts, dtype=np.int64)
    sizes, freq = np.unique(counts, return_counts=True)
    total = weight = 0.0
    for a, fa in zip(sizes, freq):
        for b, fb in zip(sizes, freq):
            pairs = fa * fb - (fa if a == b else 0)  # ordered pairs of distinct records
            if pairs:
                total += pairs * chance_iou(n, int(a), int(b))
                weight += pairs
    return total / weight if weight else chance_iou(n, int(sizes[0]))


def write_overlap(result: OverlapResult, out: str | os.PathLike) -> list[Path]:
    """CSV of the numbers and two PNG figures: IoU against depth per similarity group (chance
    dashed), and the group-1 minus last-group gap against depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"overlap_{result.metric}"
    csv_path = out / f"{stem}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["metric", "layer_index", "layer", "units", "kept", "group", "iou_mean", "iou_std_over_targets", "chance", "gap_group1_minus_last"])
        for l, name in enumerate(result.layers):
            for g in range(result.iou.shape[0]):
                w.writerow([result.metric, l + 1, name, result.sizes[l], f"{result.kept[l]:.1f}", g + 1, f"{result.iou[g, l]:.4f}",
                            f"{result.iou_std[g, l]:.4f}", f"{result.chance[l]:.4f}", f"{result.gap[l]:.4f}"])
    x = np.arange(1, len(result.layers) + 1)
    colours = plt.cm.viridis(np.linspace(0, 0.9, result.iou.shape[0]))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for g in range(result.iou.shape[0]):
        ax.plot(x, result.iou[g], "o-", color=colours[g], label=f"group {g + 1}" + (" (most similar)" if g == 0 else ""))
    ax.plot(x, result.chance, "k--", label="chance (random Ω of equal size)")
    ax.set(xlabel="layer (unit group, input → output)", ylabel="IoU of kept units", title=f"Overlap of pruned sub-networks by {result.metric} similarity ({result.targets} tasks)")
    ax.set_xticks(x, result.layers, rotation=45, ha="right", fontsize=7)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    iou_png = out / f"{stem}_iou.png"
    fig.savefig(iou_png, dpi=130)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(x, result.gap, color="tab:blue")
    ax.axhline(result.gap.mean(), color="k", ls=":", label=f"mean {result.gap.mean():.3f}")
    ax.set(xlabel="layer (unit group, input → output)", ylabel="IoU(group 1) − IoU(group 5)", title=f"Similar tasks keep more of the same units ({result.metric})")
    ax.set_xticks(x, result.layers, rotation=45, ha="right", fontsize=7)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    gap_png = out / f"{stem}_gap.png"
    fig.savefig(gap_png, dpi=130)
    plt.close(fig)
    return [csv_path, iou_png, gap_png]
