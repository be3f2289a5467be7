"""Task similarity: LEEP, WordNet Wu-Palmer, and a cheap backbone embedding for pre-selection.

Every measure is a :class:`Similarity` with one method, ``scores(zoo, records, target)``, that
returns one score per zoo record (higher = more similar to the target task). :func:`nearest`
ranks a zoo with any of them, optionally pre-selecting candidates with a cheaper one.

LEEP (Nguyen et al. 2020) needs one forward pass of every zoo model on the target's training
images. The images are converted once and each compact model runs on them in one batch. Stacking
models of equal shapes under ``torch.func.vmap`` was tried and measured about 4x slower on the CPU
(grouped convolutions are slower than many small dense ones), so a plain loop it is.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageDataset, TaskData, iterate_eval
from .errors import ConfigError, MetavoteError
from .models import Backbone
from .training import Costs
from .zoo import Zoo, ZooRecord


class SimilarityError(MetavoteError):
    """Similarity cannot be computed: a class without synset, an empty target class, NaN outputs..."""


# ----------------------------------------------------------------------------- LEEP


def leep(probs: torch.Tensor, labels: torch.Tensor, num_labels: int | None = None) -> torch.Tensor:
    """LEEP of source-model softmax outputs on target data; batched over leading dimensions.

    ``probs``: (..., n, Z) softmax outputs theta(x_i) over the source's Z labels; ``labels``: (n,)
    target labels y_i in 0..Y-1. With P(y, z) = 1/n sum_{i: y_i = y} theta(x_i)_z and
    P(y | z) = P(y, z) / sum_y' P(y', z):  LEEP = 1/n sum_i log sum_z P(y_i | z) theta(x_i)_z.
    """
    probs = probs.double()
    if torch.isnan(probs).any():
        raise SimilarityError("the source model produced NaN outputs on the target data")
    y = F.one_hot(labels.long(), num_labels or int(labels.max()) + 1).double()  # (n, Y)
    if (y.sum(0) == 0).any():
        missing = torch.nonzero(y.sum(0) == 0).flatten().tolist()
        raise SimilarityError(f"target label(s) {missing} have no samples; LEEP needs every target class")
    n = probs.shape[-2]
    joint = torch.einsum("ny,...nz->...yz", y, probs) / n  # (..., Y, Z)
    conditional = joint / joint.sum(-2, keepdim=True).clamp_min(1e-300)
    eep = torch.einsum("...nz,...yz,ny->...n", probs, conditional, y)  # sum_z P(y_i|z) theta_iz
    return eep.clamp_min(1e-300).log().mean(-1)


@torch.no_grad()
def softmax_outputs(models: Sequence[nn.Module], images: np.ndarray, batch_size: int = 500) -> list[torch.Tensor]:
    """Softmax outputs (n, Z_m), on the CPU, of every model on the same uint8 images, converted once
    (and moved once to the models' device: they must share one)."""
    if not models:
        return []
    device = next(models[0].parameters()).device
    chunks = [x.to(device) for x, _ in iterate_eval(images, np.zeros(len(images), np.int64), batch_size)]
    return [torch.cat([m.eval()(x).float().softmax(-1) for x in chunks]).cpu() for m in models]


def target_sample(target: TaskData, per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``per_class`` training images per target class (the first ones, deterministic)."""
    labels = target.train_labels
    missing = [c for k, c in enumerate(target.task.classes) if not (labels == k).any()]
    if missing:
        raise SimilarityError(f"target class(es) {', '.join(missing)} have no training images")
    if per_class is None:
        return target.train_images, labels
    pick = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(target.task.n_way)])
    return target.train_images[pick], labels[pick]


@torch.no_grad()
def class_means(backbone: Backbone, images: np.ndarray, labels: np.ndarray, n: int) -> torch.Tensor:
    """Per-class mean of the backbone's features over ``images`` (labels 0..n-1), L2-normalised: (n, D)."""
    device = next(backbone.parameters()).device
    feats = torch.cat([backbone.eval().features(x.to(device)).float().cpu() for x, _ in iterate_eval(images, labels)])
    y = torch.as_tensor(labels)
    return F.normalize(torch.stack([feats[y == c].mean(0) for c in range(n)]), dim=1)


# ----------------------------------------------------------------------------- WordNet

WORDNET_HELP = (
    "WordNet 3.0 is needed: on a machine with internet run `python -c \"import nltk; nltk.download('wordnet')\"`; "
    "offline on Debian run `apt-get install wordnet-base wordnet-sense-index` (make installs it)"
)
DEBIAN_WORDNET = Path("/usr/share/wordnet")
_WORDNET_FILES = ["data.adj", "data.adv", "data.noun", "data.verb", "index.adj", "index.adv", "index.noun", "index.verb",
                  "index.sense", "adj.exc", "adv.exc", "noun.exc", "verb.exc", "cntlist.rev"]

# CIFAR-100 class -> WordNet 3.0 noun synset, each checked by hand against its gloss
# (tests/test_similarity.py verifies that every entry exists and reads as intended).
CIFAR100_SYNSETS = {
    "apple": "apple.n.01", "aquarium_fish": "fish.n.01", "baby": "baby.n.01", "bear": "bear.n.01",
    "beaver": "beaver.n.07", "bed": "bed.n.01", "bee": "bee.n.01", "beetle": "beetle.n.01", "bicycle": "bicycle.n.01",
    "bottle": "bottle.n.01", "bowl": "bowl.n.01", "boy": "male_child.n.01", "bridge": "bridge.n.01", "bus": "bus.n.01",
    "butterfly": "butterfly.n.01", "camel": "camel.n.01", "can": "can.n.01", "castle": "castle.n.02",
    "caterpillar": "caterpillar.n.01", "cattle": "cattle.n.01", "chair": "chair.n.01", "chimpanzee": "chimpanzee.n.01",
    "clock": "clock.n.01", "cloud": "cloud.n.02", "cockroach": "cockroach.n.01", "couch": "sofa.n.01", "crab": "crab.n.01",
    "crocodile": "crocodile.n.01", "cup": "cup.n.01", "dinosaur": "dinosaur.n.01", "dolphin": "dolphin.n.02",
    "elephant": "elephant.n.01", "flatfish": "flatfish.n.02", "forest": "forest.n.01", "fox": "fox.n.01",
    "girl": "female_child.n.01", "hamster": "hamster.n.01", "house": "house.n.01", "kangaroo": "kangaroo.n.01",
    "keyboard": "keyboard.n.01", "lamp": "lamp.n.02", "lawn_mower": "lawn_mower.n.01", "leopard": "leopard.n.02",
    "lion": "lion.n.01", "lizard": "lizard.n.01", "lobster": "lobster.n.02", "man": "man.n.01", "maple_tree": "maple.n.02",
    "motorcycle": "motorcycle.n.01", "mountain": "mountain.n.01", "mouse": "mouse.n.01", "mushroom": "mushroom.n.02",
    "oak_tree": "oak.n.02", "orange": "orange.n.01", "orchid": "orchid.n.01", "otter": "otter.n.02", "palm_tree": "palm.n.03",
    "pear": "pear.n.01", "pickup_truck": "pickup.n.01", "pine_tree": "pine.n.01", "plain": "plain.n.01", "plate": "plate.n.04",
    "poppy": "poppy.n.01", "porcupine": "porcupine.n.01", "possum": "opossum.n.02", "rabbit": "rabbit.n.01",
    "raccoon": "raccoon.n.02", "ray": "ray.n.07", "road": "road.n.01", "rocket": "rocket.n.01", "rose": "rose.n.01",
    "sea": "sea.n.01", "seal": "seal.n.09", "shark": "shark.n.01", "shrew": "shrew.n.02", "skunk": "skunk.n.04",
    "skyscraper": "skyscraper.n.01", "snail": "snail.n.01", "snake": "snake.n.01", "spider": "spider.n.01",
    "squirrel": "squirrel.n.01", "streetcar": "streetcar.n.01", "sunflower": "sunflower.n.01",
    "sweet_pepper": "sweet_pepper.n.02", "table": "table.n.02", "tank": "tank.n.01", "telephone": "telephone.n.01",
    "television": "television_receiver.n.01", "tiger": "tiger.n.02", "tractor": "tractor.n.01", "train": "train.n.01",
    "trout": "trout.n.02", "tulip": "tulip.n.01", "turtle": "turtle.n.02", "wardrobe": "wardrobe.n.01",
    "whale": "whale.n.02", "willow_tree": "willow.n.01", "wolf": "wolf.n.01", "woman": "woman.n.01", "worm": "worm.n.01",
}


def wordnet_data_dir() -> Path:
    """An nltk data folder holding WordNet 3.0: nltk's own when present, else one assembled in the
    cache from Debian's ``wordnet-base``/``wordnet-sense-index`` files plus the ``lexnames`` file
    this package ships (Debian has it only as a man page)."""
    import nltk

    try:
        return Path(nltk.data.find("corpora/wordnet")).parents[1]
    except LookupError:
        pass
    target = Path(os.environ.get("METAVOTE_CACHE", Path.home() / ".cache" / "metavote")) / "nltk_data"
    folder = target / "corpora" / "wordnet"
    if not (folder / "lexnames").exists():
        if not (DEBIAN_WORDNET / "data.noun").exists():
            raise SimilarityError(f"WordNet not found (looked in nltk's data path and {DEBIAN_WORDNET}); {WORDNET_HELP}")
        tmp = folder.with_name("wordnet.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in _WORDNET_FILES:  # copies, not links: nltk refuses paths that leave its root
            if (DEBIAN_WORDNET / name).exists():
                shutil.copy(DEBIAN_WORDNET / name, tmp / name)
        shutil.copy(Path(__file__).with_name("resources") / "lexnames", tmp / "lexnames")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    return target


@lru_cache(maxsize=1)
def wordnet():
    """nltk's WordNet 3.0 reader (see :func:`wordnet_data_dir` for where it comes from)."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    root = wordnet_data_dir()
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": we use English only
        return WordNetCorpusReader(nltk.data.find("corpora/wordnet"), None)


def class_synset(name: str, wnid: str | None = None):
    """The WordNet noun synset of a class: by WordNet id (``n02084071``), by the CIFAR-100 table,
    or, for other names, the first noun sense of the name itself."""
    wn = wordnet()
    if wnid:
        return wn.synset_from_pos_and_offset("n", int(wnid[1:]))
    if name in CIFAR100_SYNSETS:
        return wn.synset(CIFAR100_SYNSETS[name])
    senses = wn.synsets(name.replace(" ", "_"), pos="n")
    if not senses:
        raise SimilarityError(f"class {name!r} has no WordNet noun synset; name its folder by WordNet id (nXXXXXXXX) or rename it")
    return senses[0]


def wordnet_head_rows(pretrained_wnids: Sequence[str | None], classes: Sequence[str], wnids: dict[str, str | None] | None = None
                      ) -> list[list[int] | None] | None:
    """For each of ``classes``, the rows of a pre-trained head (whose classes have the WordNet ids
    ``pretrained_wnids``, ImageNet's) that are that class or a kind of it: CIFAR's ``bear`` is
    ImageNet's brown, American black, polar and sloth bears (their rows are averaged by
    :func:`~metavote.models.replace_head`); None for a class with none, None when no class has any.
    Of CIFAR-100's classes, 67 have ImageNet-1k rows this way."""
    anchors = _pretrained_ancestors(tuple(pretrained_wnids))
    rows: list[list[int] | None] = []
    for c in classes:
        try:
            s = class_synset(c, (wnids or {}).get(c)).name()
        except SimilarityError:
            rows.append(None)
            continue
        rows.append([i for i, a in enumerate(anchors) if s in a] or None)
    return rows if any(r is not None for r in rows) else None


@lru_cache(maxsize=4)
def _pretrained_ancestors(wnids: tuple[str | None, ...]) -> list[frozenset[str]]:
    """Each pre-trained class's synset and every synset above it (names), once per head."""
    wn = wordnet()
    out = []
    for w in wnids:
        if not w:
            out.append(frozenset())
            continue
        s = wn.synset_from_pos_and_offset("n", int(w[1:]))
        out.append(frozenset({s.name()} | {a.name() for a in s.closure(lambda x: x.hypernyms())}))
    return out


def wup_matrix(source: Sequence[str], target: Sequence[str], wnids: dict[str, str | None] | None = None) -> np.ndarray:
    """Wu-Palmer similarity of every (target class, source class) pair, shape (len(target), len(source))."""
    wnids = wnids or {}
    s = [class_synset(c, wnids.get(c)) for c in source]
    t = [class_synset(c, wnids.get(c)) for c in target]
    return np.array([[a.wup_similarity(b) or 0.0 for b in s] for a in t])


WORDNET_RULES = ("best_match", "mean_pairs")


def task_wup(source: Sequence[str], target: Sequence[str], rule: str = "best_match", wnids: dict | None = None) -> float:
    """Task similarity from class-pair Wu-Palmer similarities.

    ``best_match`` (default): mean over the target's classes of the best match among the source's
    classes: a source sharing a class, or a close relative, for each target class scores high.
    ``mean_pairs``: the mean over all pairs, which blurs a few strong matches into many weak ones.
    """
    if rule not in WORDNET_RULES:
        raise ConfigError(f"unknown WordNet rule {rule!r}; choose from {', '.join(WORDNET_RULES)}")
    m = wup_matrix(source, target, wnids)
    return float(m.max(1).mean() if rule == "best_match" else m.mean())


# ----------------------------------------------------------------------------- measures


class Similarity:
    """Scores zoo records against a target task; higher = more similar."""

    name = "base"

    def scores(self, zoo: Zoo, records: Sequence[ZooRecord], target: TaskData, costs: Costs | None = None) -> np.ndarray:
        """One score per record; ``costs``, when given, is charged the forward passes run to score them."""
        raise NotImplementedError


class LEEPSimilarity(Similarity):
    """LEEP from each zoo model (with its own task head) to the target's training data, on up to
    ``per_class`` images per target class (default 50: 250 images for a 5-way task)."""

    name = "leep"

    def __init__(self, per_class: int | None = 50) -> None:
        self.per_class = per_class

    def scores(self, zoo, records, target, costs=None):
        images, labels = target_sample(target, self.per_class)
        models = [zoo.load(r)[0] for r in records]
        probs = softmax_outputs(models, images)
        if costs is not None:
            for model in models:
                costs.add_steps(model, 1, len(images), backward=False, training=False)
        y = torch.as_tensor(labels)
        return np.array([float(leep(p, y, target.task.n_way)) for p in probs])


class WordNetSimilarity(Similarity):
    """Wu-Palmer similarity of class names (:func:`task_wup`, ``rule`` best_match or mean_pairs)."""

    name = "wordnet"

    def __init__(self, rule: str = "best_match", wnids: dict | None = None) -> None:
        if rule not in WORDNET_RULES:
            raise ConfigError(f"unknown WordNet rule {rule!r}; choose from {', '.join(WORDNET_RULES)}")
        self.rule, self.wnids = rule, wnids or {}

    def scores(self, zoo, records, target, costs=None):  # no forward pass
        return np.array([task_wup(r.task.classes, target.task.classes, self.rule, self.wnids) for r in records])


class EmbeddingSimilarity(Similarity):
    """A cheap task embedding: per-class mean features of the pre-trained backbone, L2-normalised;
    task similarity = mean over target classes of the best cosine match among the source's classes.

    Class means of the zoo's dataset are computed once (``per_class`` images each) and cached, a
    one-off cost like the zoo's; a query then costs one backbone pass over the target's sample
    (what ``costs`` is charged) and a small matrix product.
    """

    name = "embedding"

    def __init__(self, backbone: Backbone, dataset: ImageDataset, per_class: int = 50) -> None:
        self.backbone, self.dataset, self.per_class = backbone.eval(), dataset, per_class
        self._means: dict[str, torch.Tensor] = {}

    def source_means(self, classes: Sequence[str]) -> torch.Tensor:
        todo = [c for c in classes if c not in self._means]
        if todo:
            sub = self.dataset.subset(todo, max_train_per_class=self.per_class)
            for c, m in zip(todo, class_means(self.backbone, sub.train_images, sub.train_labels, len(todo))):
                self._means[c] = m
        return torch.stack([self._means[c] for c in classes])

    def scores(self, zoo, records, target, costs=None):
        images, labels = target_sample(target, self.per_class)
        t = class_means(self.backbone, images, labels, target.task.n_way)
        if costs is not None:
            costs.add_steps(self.backbone, 1, len(images), backward=False, training=False)
        self.source_means(sorted({c for r in records for c in r.task.classes}))
        return np.array([float((t @ self.source_means(r.task.classes).T).max(1).values.mean()) for r in records])


def make_similarity(metric: str, rule: str = "best_match", backbone: Backbone | None = None, dataset: ImageDataset | None = None) -> Similarity:
    """A similarity measure by name: ``leep``, ``wordnet`` (with its ``rule``) or ``embedding``."""
    if metric == "leep":
        return LEEPSimilarity()
    if metric == "wordnet":
        return WordNetSimilarity(rule, dict(zip(dataset.classes, dataset.wnids)) if dataset is not None else None)
    if metric == "embedding":
        if backbone is None or dataset is None:
            raise ConfigError("the embedding similarity needs the backbone and the zoo's dataset")
        return EmbeddingSimilarity(backbone, dataset)
    raise ConfigError(f"unknown similarity {metric!r}; choose leep, wordnet or embedding")


def nearest(
    zoo: Zoo,
    target: TaskData,
    k: int = 3,
    similarity: Similarity | None = None,
    preselect: Similarity | None = None,
    candidates: int = 20,
    records: Sequence[ZooRecord] | None = None,
    exclude_target: bool = True,
    costs: Costs | None = None,
) -> list[tuple[ZooRecord, float]]:
    """The ``k`` zoo records most similar to ``target``, best first, with their scores.

    With ``preselect``, only its top ``candidates`` are scored by ``similarity`` (default LEEP).
    The target's own record, if the zoo has one, is left out unless ``exclude_target`` is False.
    ``costs``, when given, is charged the search's forward passes (LEEP: every candidate model
    over the target's sample).
    """
    similarity = similarity or LEEPSimilarity()
    pool = list(records if records is not None else zoo.records())
    if exclude_target:
        pool = [r for r in pool if r.task.id != target.task.id]
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if len(pool) < k:
        raise SimilarityError(f"the zoo has {len(pool)} candidate record(s), fewer than the {k} neighbours asked for")
    if preselect is not None and len(pool) > candidates:
        first = preselect.scores(zoo, pool, target, costs)
        pool = [pool[i] for i in np.argsort(-first, kind="stable")[: max(candidates, k)]]
    scores = similarity.scores(zoo, pool, target, costs)
    order = np.argsort(-scores, kind="stable")[:k]
    return [(pool[i], float(scores[i])) for i in order]
