"""Meta-Vote Pruning (the paper's Algorithm 1): prune for a new task from its nearest zoo tasks.

1. Find N neighbours of the target task in the zoo (LEEP by default, or given records).
2. Per unit group l: votes v_k = number of neighbours whose Omega_l keeps unit k; sample
   round((1 - r) n_l) units without replacement from softmax(v / tau) (Gumbel top-k).
3. Initialise every weight of the kept units by averaging it over the neighbours whose
   sub-network contains it (their dense views); a weight no neighbour has keeps the backbone's
   value. BatchNorm parameters and running statistics are averaged the same way.
4. Give the task its head, extract the physically small sub-network, re-estimate its BatchNorm
   statistics on a few training batches (ours, not the paper's), fine-tune J iterations (SGD,
   momentum 0.9, cosine-annealed lr), evaluate.

Head policy: the pre-trained head's rows when the backbone was trained on every target class;
otherwise, when every target class appears in some neighbour's task, the mean of those
neighbours' rows for it (in the backbone's feature numbering); otherwise class-mean feature
imprinting on the extracted sub-network.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..data import ImageDataset
from ..errors import ConfigError
from ..models.base import Backbone, replace_head
from ..models.units import IN, UnitGroup
from ..pruning import MagnitudeImportance, SubNetwork, TensorIndex, dense_view, shrink, target_widths, units_per_kind
from ..search import ZooSearch
from ..similarity import Similarity, make_similarity, nearest
from ..training import Costs, Timer, frozen, imprint_head, make_optimizer, optimizer_step, recalibrate_bn
from ..zoo import ZooRecord, record_budget, zoo_budget
from .ahnp import global_removal
from .base import Method, register

OMEGAS = ("vote", "random", "nearest")
SIMILARITIES = ("ann", "leep", "wordnet", "embedding")
INITS = ("neighbours", "nearest-first", "backbone")
HEADS = ("auto", "pretrained", "neighbours", "imprint")
DEFAULT_TEMPERATURE = 0.1
"""tau: at 0.1 a unit with one vote more is e^10 ≈ 22 000 times likelier, so sampling is a majority
vote whose ties are broken at random. At 0.5 a unit kept by one neighbour is only e^2 ≈ 7 times
likelier than one kept by none, so many unvoted units are drawn: the colder vote won on validation
tasks with each zoo measured, +0.7 points at J = 20 (18 of 30 tasks ahead) with the CPU profile's
IFP J = 200 zoo, +1.8 (26 of 30) with an IFP J = 1000 zoo, +1.5 (10 of 16) on the CPU
ViT zoo (docs/benchmarks/main-tables.md)."""


def weigh_budget(ranked: Sequence[tuple[ZooRecord, float]], weight: float, budget: int) -> list[tuple[ZooRecord, float]]:
    """Records with their similarity plus ``weight`` x log10(record's training budget / ``budget``),
    capped at 0 (a record trained as long as the zoo's, or longer, loses nothing), best first."""
    scored = [(r, s + weight * min(0.0, float(np.log10(max(record_budget(r), 1) / budget)))) for r, s in ranked]
    return sorted(scored, key=lambda rs: -rs[1])


def vote_counts(subnets: Sequence[SubNetwork]) -> dict[str, np.ndarray]:
    """Per group, how many of the sub-networks keep each unit."""
    if not subnets:
        raise ConfigError("voting needs at least one neighbour")
    sizes = subnets[0].sizes
    return {g: np.bincount(np.concatenate([s.kept[g] for s in subnets]), minlength=n) for g, n in sizes.items()}


def sample_by_votes(votes: dict[str, np.ndarray], widths: dict[str, int], temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> SubNetwork:
    """Per group, ``widths[g]`` units drawn without replacement from softmax(votes / temperature),
    by Gumbel top-k (equivalent to successive draws without replacement), group after group in the
    order of ``votes`` (MVP passes the model's depth order)."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    rng = np.random.default_rng(seed)
    kept = {}
    for g, v in votes.items():
        keys = v / temperature + rng.gumbel(size=len(v))
        kept[g] = np.sort(np.argsort(-keys, kind="stable")[: widths[g]])
    return SubNetwork(kept, {g: len(v) for g, v in votes.items()})


LAYOUTS = ("ratio", "neighbours")
SPREAD_KINDS = ("head", "node")
"""Kinds of unit that cost the same in every block (a transformer's heads and MLP nodes), so moving
some from one block to another keeps the model's size: the ``neighbours`` layout spreads them."""


def neighbour_widths(groups: Sequence[UnitGroup], subnets: Sequence[SubNetwork], widths: dict[str, int]) -> dict[str, int]:
    """``widths`` with each spreadable kind's total (:data:`SPREAD_KINDS`) laid over its groups as
    the neighbours lay theirs: in proportion to how many units of each group they keep on average
    (largest remainder; never more than a group holds, nor none where a group cannot be empty).
    An AHNP record keeps 4 of a first block's 6 heads and none of a fifth's; the ratio's widths
    keep one head in each. Channels keep the ratio's widths: a channel's cost differs by layer."""
    out = dict(widths)
    for kind in SPREAD_KINDS:
        members = [g for g in groups if g.kind == kind]
        if not members:
            continue
        total = sum(widths[g.name] for g in members)
        low = np.array([0 if g.can_be_empty else 1 for g in members])
        cap = np.array([g.size for g in members])
        share = np.array([np.mean([len(s.kept[g.name]) for s in subnets]) for g in members], dtype=float)
        if share.sum() <= 0:
            continue
        want = share * total / share.sum()
        got = np.maximum(np.minimum(np.floor(want), cap), low).astype(int)
        while got.sum() != total:  # largest remainder first; then take from the groups furthest above their share
            if got.sum() < total:
                got[int(np.argmax(np.where(got < cap, want - got, -np.inf)))] += 1
            else:
                got[int(np.argmax(np.where(got > low, got - want, -np.inf)))] -= 1
        out |= {g.name: int(n) for g, n in zip(members, got)}
    return out


def average_neighbours(backbone: Backbone, neighbours: Sequence[tuple[SubNetwork, dict[str, torch.Tensor]]], rule: str = "mean",
                       groups: Sequence[UnitGroup] | None = None) -> dict[str, torch.Tensor]:
    """The backbone's body state with every weight replaced by its mean over the neighbours whose
    sub-network holds it (``rule="first"``: its value in the first neighbour, in the given order,
    that holds it); weights no neighbour holds keep the backbone's values. Works on tensor
    indices, so a head's q, k, v rows and a node's fc2 column are averaged like a channel's filter."""
    if rule not in ("mean", "first"):
        raise ConfigError(f"rule must be 'mean' or 'first', got {rule!r}")
    index = TensorIndex(backbone, groups or backbone.unit_groups())
    skip = backbone.classifier_keys()
    base = {k: v for k, v in backbone.state_dict().items() if k not in skip and not k.endswith("num_batches_tracked")}
    zeros = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in base.items()}
    total = {k: z.clone() for k, z in zeros.items()}
    count = {k: z.clone() for k, z in zeros.items()}
    for subnet, state in reversed(neighbours) if rule == "first" else neighbours:
        body = {k: v.double() for k, v in state.items() if k in base}
        held = dense_view(zeros, subnet, {k: torch.ones_like(v) for k, v in body.items()}, index)
        for k, v in dense_view(zeros, subnet, body, index).items():
            if rule == "first":  # later (better-ranked) neighbours overwrite what they hold
                total[k] = torch.where(held[k] > 0, v, total[k])
                count[k] = torch.maximum(count[k], held[k])
            else:
                total[k] += v
                count[k] += held[k]
    return {k: torch.where(count[k] > 0, total[k] / count[k].clamp_min(1), base[k].double()).to(base[k].dtype) for k in base}


def _neighbour_head(records: Sequence[ZooRecord], states, subnets, classes: Sequence[str], model: Backbone,
                    groups: Sequence[UnitGroup]) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """Mean of the neighbours' head rows per target class, in the backbone's feature numbering
    (``model`` is the full-size model that will carry the head, ``groups`` its unit groups), and
    for each class whether some neighbour has it (rows of classes none has are zero)."""
    features, name = model.num_features, model.classifier_name
    feeding = next((g for g in groups if name in g.consumers), None)  # the group that feeds the head, if pruned
    slot = next(s for s in feeding.slots if s.module == name and s.role == IN) if feeding is not None else None  # a unit's features
    weight, bias, covered = torch.zeros(len(classes), features), torch.zeros(len(classes)), []
    for c_idx, c in enumerate(classes):
        rows = []
        for r, state, subnet in zip(records, states, subnets):
            if c in r.task.classes:
                k = r.task.classes.index(c)
                w = torch.zeros(features)
                at = slot.indices(subnet.kept[feeding.name], feeding.size) if feeding is not None else slice(None)
                w[at] = state[f"{name}.weight"][k].cpu()
                rows.append((w, state[f"{name}.bias"][k].cpu()))
        covered.append(bool(rows))
        if rows:
            weight[c_idx] = torch.stack([w for w, _ in rows]).mean(0)
            bias[c_idx] = torch.stack([b for _, b in rows]).mean(0)
    return weight, bias, covered


@dataclass
class Neighbourhood:
    """MVP's untimed preparation: the backbone's unit groups (derived once per prune), the
    neighbours with their scores and loaded models, and what finding them cost."""

    groups: list[UnitGroup]
    records: list[ZooRecord]
    scores: list[float]
    similarity: str
    loaded: list[tuple[Backbone, SubNetwork]]
    search_seconds: float
    search_tflops: float


def trim_to_widths(model: Backbone, subnet: SubNetwork, widths: dict[str, int]) -> tuple[Backbone, SubNetwork, int]:
    """``model`` (the sub-network ``subnet`` of the backbone) cut to as many units of each kind as
    ``widths`` keeps of it, where it holds more: the weakest units of the kind by their own weight
    norms (:class:`~metavote.pruning.MagnitudeImportance`) go first, from whichever blocks hold
    them, never emptying a group that cannot run empty (an AHNP record's heads lie where its scores
    put them). Returns the model, its Omega in the backbone's numbering and how many units went:
    so a record kept by its own widths has the size of every other row of a table."""
    groups = model.unit_groups()
    have, want = units_per_kind(groups), units_per_kind(groups, widths)
    targets = {kind: min(have[kind], want[kind]) for kind in have}
    removed = sum(have[kind] - targets[kind] for kind in have)
    if not removed:
        return model, subnet, 0
    keep = global_removal(MagnitudeImportance()(model, groups, ()), groups, targets, threshold=float("inf"))
    return shrink(model, keep, groups), subnet.compose(keep), removed


@register
@dataclass(kw_only=True)
class MVP(Method):
    """Meta-Vote Pruning of the backbone for a new task from its nearest zoo tasks.

    ``neighbours``: how many to find (N) by ``similarity`` (``ann``: LEEP on few images over the
    nearest records by stored task embedding, :class:`~metavote.search.ZooSearch`; ``leep``:
    exhaustive LEEP over every record; ``wordnet`` or ``embedding``),
    among the zoo's records of ``zoo_method`` (default: the method the zoo was built with, IFP or
    AHNP; MVP's own results are not voted on; ``all``: every record at this ratio, ``prune
    --save-to``'s too; the target's own record never counts), or the records to use. ``quality``:
    a record's score is its similarity plus ``quality`` times log10 of its training budget over the
    zoo's (:func:`~metavote.zoo.record_budget`, capped at 0), so a record trained for J = 20 in a
    J = 1000 zoo loses 1.7 ``quality`` (LEEP is a mean log-likelihood, nats); the search
    then ranks its 20 candidates (every one already scored by LEEP) by that sum. ``preselect``: LEEP ranks only
    the embedding's top 20. ``temperature``: tau of softmax(votes / tau). ``init``: ``neighbours``
    (the paper: each kept weight is the mean over the neighbours that hold it), ``nearest-first``
    (each kept weight from the most similar neighbour that holds it) or ``backbone`` (the
    pre-trained weights at the voted units: an ablation that separates the vote from the averaging).
    ``layout``: how many units each group keeps: ``neighbours`` (default: a transformer's heads and
    MLP nodes spread over the blocks as the neighbours spread theirs, as many in all as the ratio
    keeps: :func:`neighbour_widths`; channels keep the ratio's widths; with ``align`` > 1, the
    aligned widths) or ``ratio`` (the paper: round((1 - r) n) per group). AHNP's records keep
    about 4 of the CPU ViT's 6 heads in its first block and none in its last two, and 188 of 384
    nodes in the first block; at the ratio's one
    head and 77 nodes per block, the vote drew units in blocks no neighbour kept any. On 10
    validation tasks (58-record AHNP zoo, J = 20) the neighbours' layout gained +8.6 ± 1.1 points
    (10 of 10; docs/benchmarks/peer.md, "Why MVP was behind on the ViT").
    ``omega``: ``vote`` (the paper), or for the decomposition ablation ``random`` (units drawn
    uniformly, weights still by ``init``) or ``nearest`` (the nearest neighbour's own Omega and
    weights). ``head``: ``auto`` (the policy below), ``pretrained``, ``neighbours`` (the
    neighbours' rows; imprinted rows for classes no neighbour has) or ``imprint``;
    ``head_steps``: optimizer steps on the head alone (body frozen) before fine-tuning, counted as
    forward passes. ``freeze``: the share of the body's blocks, from the input, that fine-tuning
    leaves as they are (0, the paper: none); a step then neither updates nor back-propagates
    through them, so it costs fewer FLOPs (measured on validation tasks: no better than fewer
    plain steps for the same FLOPs). ``bn_batches``: before
    fine-tuning, BatchNorm statistics are re-estimated on this many training batches (beyond the
    paper; 0 turns it off): averaged neighbour statistics do not match a sub-network whose units
    come from different neighbours. Measured on 3 CPU-profile tasks it lifts accuracy before
    fine-tuning from 27% to 38% and after 20 iterations by 1.5 points. Defaults are the paper's:
    N = 3, r = 0.9, J = 100, lr 0.01 with cosine annealing, batch 128.

    The neighbour search and the loading of the neighbours are timed on their own
    (``search_seconds``) and their forward passes counted on their own (``search_tflops``: LEEP runs
    every candidate model over 50 images per target class); they are not training FLOPs.
    """

    key = "mvp"
    name = "MVP"
    needs_zoo = True

    neighbours: int | Sequence[ZooRecord] = 3
    similarity: str = "ann"
    temperature: float = DEFAULT_TEMPERATURE
    preselect: bool = False
    zoo_method: str | None = None
    quality: float = 0.0
    init: str = "neighbours"
    omega: str = "vote"
    layout: str = "neighbours"
    head: str = "auto"
    head_steps: int = 0
    freeze: float = 0.0
    bn_batches: int = 5
    dataset: ImageDataset | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        for name, value, choices in (("omega", self.omega, OMEGAS), ("head", self.head, HEADS), ("layout", self.layout, LAYOUTS)):
            if value not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        if self.head_steps < 0:
            raise ConfigError(f"head_steps must be >= 0, got {self.head_steps}")
        if not 0.0 <= self.freeze < 1.0:
            raise ConfigError(f"freeze must be in [0, 1), got {self.freeze}")
        if isinstance(self.neighbours, int) and self.neighbours < 1:
            raise ConfigError(f"neighbours must be >= 1, got {self.neighbours}")
        if not isinstance(self.neighbours, int) and not self.neighbours:
            raise ConfigError("MVP needs at least one neighbour record")
        if self.quality < 0:
            raise ConfigError(f"quality must be >= 0, got {self.quality}")
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}")
        if self.omega == "nearest" and self.align != 1:
            raise ConfigError("the nearest record keeps its own widths, so it cannot align them; use mvp (its vote draws aligned widths)")
        self._measures: dict = {}  # built once: the embedding caches its class means, the search its index

    def settings(self) -> dict:
        out = super().settings()
        if not isinstance(self.neighbours, int):
            out["neighbours"] = [r.task.id for r in self.neighbours]
        return out

    def _measure(self, name: str, backbone: Backbone) -> Similarity:
        if name not in self._measures:
            if name == "embedding" and self.dataset is None:
                raise ConfigError("the embedding similarity needs the zoo's dataset (MVP(dataset=...))")
            self._measures[name] = make_similarity(name, backbone=backbone, dataset=self.dataset)
        return self._measures[name]

    def _search(self, zoo, backbone: Backbone) -> ZooSearch:
        key = ("ann", id(zoo), id(backbone))
        if key not in self._measures:
            self._measures[key] = ZooSearch(zoo, backbone, self.dataset)
        return self._measures[key]

    def prepare(self, backbone, data, zoo, progress=False) -> Neighbourhood:
        groups = backbone.unit_groups()
        target_widths(groups, self.ratio)  # rejects a bad ratio before the search
        search_costs = Costs()
        with Timer() as search:
            if isinstance(self.neighbours, int):
                source = self.zoo_method or zoo.source_method
                every = source == "all"
                method = None if every else source
                if every:
                    ratios = sorted(float(r) for r in zoo.param_values("ratio"))
                    if not any(np.isclose(r, self.ratio) for r in ratios):
                        held = ", ".join(f"{r:g}" for r in ratios) or "none: build it with `metavote zoo build`"
                        raise ConfigError(f"zoo {zoo.root} holds no record at ratio {self.ratio} (its ratios: {held}); prune at the "
                                          "zoo's ratio, or use mvp, whose vote makes any ratio")
                elif not zoo.count(source):
                    raise ConfigError(f"zoo {zoo.root} has no records of method {source}; build it with `metavote zoo build`")
                at_ratio = (lambda r: np.isclose(r.params.get("ratio", -1), self.ratio)) if every else None  # noqa: E731
                k = self.neighbours
                if self.similarity == "ann":  # reads only the candidates' rows: a large zoo costs no more
                    ranked = self._search(zoo, backbone).nearest(data, k, method=method, costs=search_costs, where=at_ratio,
                                                                 every_candidate=bool(self.quality))
                else:
                    pool = [r for r in zoo.records(method=method) if at_ratio is None or at_ratio(r)]
                    if self.quality:  # rank the top 20 by score and budget
                        k = max(k, min(20, sum(r.task.id != data.task.id for r in pool)))
                    pre = self._measure("embedding", backbone) if self.preselect else None
                    ranked = nearest(zoo, data, k, self._measure(self.similarity, backbone), preselect=pre, records=pool,
                                     costs=search_costs)
                if self.quality:
                    ranked = weigh_budget(ranked, self.quality, zoo_budget(zoo))[: self.neighbours]
                records, scores, how = [r for r, _ in ranked], [s for _, s in ranked], self.similarity
            else:
                records, scores, how = list(self.neighbours), [float("nan")] * len(self.neighbours), "given"
            loaded = [zoo.load(r) for r in records]
        return Neighbourhood(groups, records, scores, how, loaded, search.seconds, search_costs.tflops)

    def prune(self, backbone, data, zoo, head_rows, costs, seed, prepared: Neighbourhood, progress):
        groups, records = prepared.groups, prepared.records
        subnets = [s for _, s in prepared.loaded]
        states = [m.state_dict() for m, _ in prepared.loaded]
        if {g.name: g.size for g in groups} != subnets[0].sizes:
            raise ConfigError("the zoo's sub-networks do not match this backbone's unit groups")
        widths = self.widths(backbone, groups)
        if self.omega == "nearest":  # the nearest neighbour's model as it is
            subnets, states, records = subnets[:1], states[:1], records[:1]
            subnet = subnets[0]
            # by kind: an AHNP record's units lie where its scores put them, a kind's total is its size; a kind with more is trimmed below
            want, have = units_per_kind(groups, widths), units_per_kind(groups, subnet.widths())
            short = sum(max(0, want[k] - have[k]) for k in want)
            if short > 0.02 * sum(subnet.sizes.values()):
                raise ConfigError(f"the nearest record ({records[0].task.id}) keeps {short} units fewer than ratio {self.ratio} "
                                  f"asks for: prune at the zoo's ratio")
        elif self.omega == "random":
            rng = np.random.default_rng(seed)
            subnet = SubNetwork({g.name: np.sort(rng.choice(g.size, widths[g.name], replace=False)) for g in groups}, subnets[0].sizes)
        else:  # drawn group by group in the model's depth order (not the record files' key order)
            if self.layout == "neighbours" and self.align == 1:
                widths = neighbour_widths(groups, subnets, widths)
            votes = vote_counts(subnets)
            subnet = sample_by_votes({g.name: votes[g.name] for g in groups}, widths, self.temperature, seed)
        full = copy.deepcopy(backbone)
        if self.init != "backbone":
            rule = "first" if self.init == "nearest-first" else "mean"
            full.load_state_dict(average_neighbours(backbone, list(zip(subnets, states)), rule, groups), strict=False)
        knows_classes = head_rows is not None and None not in head_rows and isinstance(full.get_classifier(), nn.Linear)
        head = ("pretrained" if knows_classes else "neighbours") if self.head == "auto" else self.head
        if head == "pretrained" and not knows_classes:
            raise ConfigError("head 'pretrained' needs a backbone trained on every target class")
        # first, so that a headless encoder has a head to number features by
        replace_head(full, data.task.n_way, head_rows if head == "pretrained" else None)
        if not isinstance(backbone.get_classifier(), nn.Linear):
            groups = full.unit_groups()  # a headless encoder's last group gains the new head as a reader
        imprint_rows = []
        if head == "neighbours":
            weight, bias, covered = _neighbour_head(records, states, subnets, data.task.classes, full, groups)
            if self.head == "auto" and not all(covered):
                head = "imprint"  # the paper's policy: neighbours' rows only when they cover every class
            else:
                with torch.no_grad():
                    full.get_classifier().weight.copy_(weight)
                    full.get_classifier().bias.copy_(bias)
                imprint_rows = [i for i, c in enumerate(covered) if not c]
        subnet.check(groups)
        model = shrink(full, subnet.kept, groups)
        if head == "imprint":
            imprint_head(model, data.train_images, data.train_labels, data.task.n_way)
        elif imprint_rows:  # classes no neighbour has: imprinted rows beside the neighbours' rows
            imprinted = copy.deepcopy(model)
            imprint_head(imprinted, data.train_images, data.train_labels, data.task.n_way)
            with torch.no_grad():
                model.get_classifier().weight[imprint_rows] = imprinted.get_classifier().weight[imprint_rows]
                model.get_classifier().bias[imprint_rows] = imprinted.get_classifier().bias[imprint_rows]
            head = f"neighbours ({len(imprint_rows)} imprinted)"
        trimmed = 0
        if self.omega == "nearest":  # a record with more units than the ratio's widths (an older AHNP record) is cut to them
            model, subnet, trimmed = trim_to_widths(model, subnet, widths)
        bn_batches = self.bn_batches
        if self.head_steps:
            self._train_head(model, data, costs, seed)
            bn_batches = 0  # re-estimated before the head steps, unchanged by them
        with frozen(model, self.freeze) as frozen_blocks:
            self.fine_tune(model, data, costs, seed, progress, bn_batches)
        return model, subnet, {"neighbours": [r.task.id for r in records], "neighbour_scores": prepared.scores,
                               "similarity": prepared.similarity, "head": head, "frozen_blocks": frozen_blocks, "trimmed_units": trimmed,
                               "search_seconds": prepared.search_seconds, "search_tflops": prepared.search_tflops}

    def _train_head(self, model: Backbone, data, costs: Costs, seed: int) -> None:
        """``head_steps`` steps on the head alone at the fine-tuning lr, the body frozen in eval mode
        (its BatchNorm statistics re-estimated first); counted as forward passes (the head's
        backward is negligible)."""
        recalibrate_bn(model, data, self.bn_batches, self.batch_size, seed, costs)
        head = model.get_classifier()
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        optimizer = make_optimizer(head, self.optimizer, self.lr)
        batches = iter(data.loader(self.batch_size, seed=seed + 1, device=next(model.parameters()).device))
        model.eval()
        for _ in range(self.head_steps):
            optimizer_step(model, optimizer, *next(batches))
        for p in trainable:
            p.requires_grad_(True)
        costs.add_steps(model, self.head_steps, self.batch_size, backward=False, training=False)


@register
@dataclass(kw_only=True)
class NearestRecord(MVP):
    """The nearest zoo record's own sub-network and weights, given the task's head and fine-tuned
    J iterations: MVP's search without its vote (beyond the paper; ``MVP(omega="nearest")``).

    Its start is one sub-network trained as a whole, where MVP's averages units that neighbours
    trained apart. On validation tasks it beat MVP (tau 0.5) at J = 20 with every zoo measured: by
    4.3 points (26 of 30 ahead) with a zoo built by IFP at J = 1000, by 11.3 (16 of 16) with the CPU
    ViT zoo, and with 40 steps of 32 by 3.8 (28 of 30) with the CPU profile's J = 200 zoo
    (docs/benchmarks/main-tables.md, issue 14). On the ViT that was MVP at the ratio's widths per
    block; laid out as its AHNP neighbours (``layout="neighbours"``), MVP leads it by 1.1 ± 0.4
    (8 of 10 validation tasks), so ``auto`` votes in an AHNP zoo.
    It keeps the record's Omega, except that a record holding more units of a kind than ``ratio``'s
    widths keep (an AHNP record of an older zoo: one head more at r = 0.8 on the CPU ViT) is cut to
    them by its own weight norms (:func:`trim_to_widths`), so its row has the size of every other
    row of a table.

    Unlike MVP it chooses among every record at the ratio (``zoo_method="all"``), those ``prune``
    saved too, so a zoo grown by use serves later tasks: on 10 validation tasks, each pruned after
    a task one class away had been saved by ``auto`` at J = 20, that was +0.4 ± 1.4 points at
    J = 20 over the zoo's IFP records alone, and +8.7 ± 1.2 once ``zoo refine`` had trained the
    saved records to the zoo's 1000 steps (docs/benchmarks/peer.md, "A zoo grown by prune")."""

    key = "nearest"
    name = "nearest record"

    ignores = frozenset({"temperature", "omega", "layout"})  # it keeps the record's units: there is no vote to temper

    neighbours: int | Sequence[ZooRecord] = 1
    omega: str = "nearest"
    zoo_method: str | None = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.omega != "nearest":
            raise ConfigError(f"the nearest-record method keeps its record's units (omega 'nearest'), got {self.omega!r}; use mvp to vote")
