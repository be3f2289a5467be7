"""LEEP, batched zoo forward passes, WordNet similarity, nearest-task search and the overlap study."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metavote.cli import main
from metavote.models import cifar_resnet18
from metavote.pruning import SubNetwork, extract
from metavote.similarity import (
    CIFAR100_SYNSETS,
    Similarity,
    SimilarityError,
    softmax_outputs,
    class_synset,
    leep,
    nearest,
    task_wup,
    wordnet,
)
from metavote.study import chance_iou, overlap_study, pairwise_chance, write_overlap
from metavote.training import predict

from helpers import SHARED_DATA

# ----------------------------------------------------------------------------- LEEP


def test_leep_matches_a_hand_computed_example():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1])
    # P(y, z) = 1/3 [[.9, .1], [.8, 1.2]];  P(y | z) = [[.9/1.7, .1/1.3], [.8/1.7, 1.2/1.3]]
    eep = [0.9 * 0.9 / 1.7 + 0.1 * 0.1 / 1.3, 0.2 * 0.8 / 1.7 + 0.8 * 1.2 / 1.3, 0.6 * 0.8 / 1.7 + 0.4 * 1.2 / 1.3]
    assert float(leep(probs, labels)) == pytest.approx(np.mean(np.log(eep)), abs=1e-12)


def test_leep_bounds_and_batching():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    perfect = torch.eye(3)[labels]  # a source label that maps one-to-one onto the target's: LEEP = log 1
    uniform = torch.full((6, 3), 1 / 3)  # an uninformative source: LEEP = log(1 / Y) on balanced data
    both = leep(torch.stack([perfect, uniform]), labels)
    assert both.shape == (2,)
    assert float(both[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(both[1]) == pytest.approx(math.log(1 / 3))


def test_leep_refuses_missing_classes_and_nan():
    with pytest.raises(SimilarityError, match="no samples"):
        leep(torch.full((4, 2), 0.5), torch.tensor([0, 0, 2, 2]), num_labels=3)
    with pytest.raises(SimilarityError, match="NaN"):
        leep(torch.tensor([[float("nan"), 1.0], [0.5, 0.5]]), torch.tensor([0, 1]))


def test_softmax_outputs_equals_one_pass_per_model():
    torch.manual_seed(0)
    backbone = cifar_resnet18(width=0.125, num_classes=5).eval()
    groups = backbone.unit_groups()
    models = []
    for seed in range(3):  # same shapes, different Omega
        rng = np.random.default_rng(seed)
        subnet = SubNetwork({g.name: rng.choice(g.size, g.size // 2, replace=False) for g in groups}, {g.name: g.size for g in groups})
        models.append(extract(backbone, subnet))
    models.append(backbone)
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    for model, probs in zip(models, softmax_outputs(models, images, batch_size=3)):
        assert torch.allclose(probs, predict(model, images).softmax(-1), atol=1e-5)


# ----------------------------------------------------------------------------- WordNet


@pytest.fixture(scope="module")
def wn():
    try:
        return wordnet()
    except SimilarityError as e:
        pytest.skip(f"WordNet is not installed here ({e})")


def test_every_cifar100_class_has_its_intended_synset(wn):
    for name, synset in CIFAR100_SYNSETS.items():
        s = class_synset(name)
        assert s.name() == synset and s.pos() == "n"
    glosses = {"beaver": "rodent", "seal": "marine mammals", "ray": "fishes", "plate": "dish", "skunk": "mammal",
               "mouse": "rodents", "tank": "military", "maple_tree": "trees", "tiger": "feline", "lamp": "furniture"}
    for name, word in glosses.items():
        assert word in class_synset(name).definition(), name
    if (SHARED_DATA / "cifar100" / "classes.json").exists():
        import json

        assert set(json.loads((SHARED_DATA / "cifar100" / "classes.json").read_text())) == set(CIFAR100_SYNSETS)


def test_synsets_by_wordnet_id_and_unknown_names(wn):
    assert class_synset("whatever", "n02084071").name() == "dog.n.01"
    assert class_synset("violin").name() == "violin.n.01"  # other names: the first noun sense
    with pytest.raises(SimilarityError, match="no WordNet noun synset"):
        class_synset("class_qq")


def test_task_wup_rules(wn):
    animals = ["lion", "tiger", "wolf", "fox", "bear"]
    assert task_wup(animals, animals) == pytest.approx(1.0)
    assert task_wup(["leopard", "otter", "seal", "whale", "rabbit"], animals) > task_wup(["bus", "train", "tank", "rocket", "bicycle"], animals)
    assert task_wup(animals, animals, "mean_pairs") < 1.0  # all pairs: blurs exact matches
    with pytest.raises(Exception, match="rule"):
        task_wup(animals, animals, "max")


def test_wordnet_folder_is_assembled_from_debian_files(tmp_path, monkeypatch):
    import nltk

    import metavote.similarity as sim

    if not (sim.DEBIAN_WORDNET / "data.noun").exists():
        pytest.skip("Debian's wordnet-base is not installed")

    def nowhere(*_a, **_k):
        raise LookupError

    monkeypatch.setenv("METAVOTE_CACHE", str(tmp_path))
    monkeypatch.setattr(nltk.data, "find", nowhere)
    root = sim.wordnet_data_dir()
    assert root == tmp_path / "nltk_data"
    assert (root / "corpora" / "wordnet" / "lexnames").read_text().startswith("00\tadj.all\t3")
    assert (root / "corpora" / "wordnet" / "data.noun").stat().st_size > 10_000_000


# ----------------------------------------------------------------------------- nearest and the study


class Fixed(Similarity):
    """A similarity with given scores per task id; records what it was asked to score."""

    def __init__(self, by_task: dict[str, float]):
        self.by_task, self.asked = by_task, []

    def scores(self, zoo, records, target, costs=None):
        self.asked.append(len(records))
        return np.array([self.by_task[r.task.id] for r in records])


def test_nearest_ranks_excludes_target_and_preselects(small_zoo):
    zoo, dataset, _, tasks = small_zoo
    target = dataset.load_task(tasks[0])
    scores = {t.id: float(i) for i, t in enumerate(tasks)}
    ranked = nearest(zoo, target, k=2, similarity=Fixed(scores))
    assert [r.task for r, _ in ranked] == [tasks[5], tasks[4]]
    assert all(r.task != tasks[0] for r, _ in nearest(zoo, target, k=5, similarity=Fixed(scores)))
    exact = Fixed(scores)
    nearest(zoo, target, k=2, similarity=exact, preselect=Fixed({t.id: -float(i) for i, t in enumerate(tasks)}), candidates=3)
    assert exact.asked == [3]
    with pytest.raises(SimilarityError, match="fewer than"):
        nearest(zoo, target, k=6, similarity=Fixed(scores))


def test_nearest_by_leep_on_a_real_build(small_zoo):
    zoo, dataset, _, tasks = small_zoo
    ranked = nearest(zoo, dataset.load_task(tasks[0]), k=3)
    assert len(ranked) == 3 and all(s <= 0 for _, s in ranked)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)


def test_chance_iou():
    assert chance_iou(10, 10) == 1.0
    rng = np.random.default_rng(0)
    sims = []
    for _ in range(20000):
        a, b = rng.choice(32, 6, replace=False), rng.choice(32, 6, replace=False)
        sims.append(len(np.intersect1d(a, b)) / len(np.union1d(a, b)))
    assert chance_iou(32, 6) == pytest.approx(np.mean(sims), abs=0.003)
    # records keeping different counts (AHNP's): the mean over ordered pairs of distinct records
    assert pairwise_chance(32, np.array([6, 6, 6])) == pytest.approx(chance_iou(32, 6))
    pairs = [chance_iou(32, a, b) for a, b in ((6, 2), (6, 0), (2, 6), (2, 0), (0, 6), (0, 2))]
    assert pairwise_chance(32, np.array([6, 2, 0])) == pytest.approx(np.mean(pairs))
    assert chance_iou(6, 0) == 1.0 and chance_iou(6, 0, 3) == 0.0  # two empty blocks are identical; one empty one is not


def test_overlap_study_groups_by_similarity(tmp_path, small_zoo):
    """Omega built so that overlap falls with |i - j|; similarity = -|i - j| must order the groups."""
    zoo, dataset, _, _ = small_zoo
    records = zoo.records()
    groups = cifar_resnet18(width=0.125).unit_groups()
    fake = {}
    for i, r in enumerate(records):
        fake[r.record_id] = SubNetwork({g.name: (np.arange(g.size // 2) + i) % g.size for g in groups}, {g.name: g.size for g in groups})
    zoo.subnetwork = lambda record: fake[record.record_id]
    t = len(records)
    similarity = -np.abs(np.subtract.outer(np.arange(t), np.arange(t))).astype(float)
    result = overlap_study(zoo, dataset, similarity, "synthetic", groups=2, records=records)
    assert result.iou.shape == (2, len(groups))
    assert (result.gap > 0).all() and np.allclose(result.gap, result.iou[0] - result.iou[1])
    # target 0, layer "layer1" (8 units, 4 kept): nearest half {1, 2} has IoU 3/5 and 2/6
    l1 = [fake[r.record_id].kept["layer1"] for r in records]
    iou = lambda a, b: len(np.intersect1d(a, b)) / len(np.union1d(a, b))  # noqa: E731
    assert iou(l1[0], l1[1]) == pytest.approx(3 / 5)
    files = write_overlap(result, tmp_path / "study")
    assert [f.suffix for f in files] == [".csv", ".png", ".png"]
    assert len(files[0].read_text().splitlines()) == 1 + 2 * len(groups)
    assert all(f.read_bytes()[:4] == b"\x89PNG" for f in files[1:])
    with pytest.raises(SimilarityError, match="too few"):
        overlap_study(zoo, dataset, similarity, "synthetic", groups=6, records=records)


def test_cli_similarity_and_study(tmp_path, small_zoo, capsys):
    zoo, dataset, folder, tasks = small_zoo
    assert main(["similarity", "--zoo", str(zoo.root), "--data", str(folder), "--task", tasks[0].id, "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 nearest zoo tasks" in out and tasks[0].id not in out.split("\n", 1)[1]
    code = main(["study", "overlap", "--zoo", str(zoo.root), "--data", str(folder), "--metric", "leep", "--groups", "2",
                 "--out", str(tmp_path / "study"), "--quiet"])
    assert code == 0 and (tmp_path / "study" / "overlap_leep_iou.png").exists()
    assert main(["similarity", "--zoo", str(zoo.root), "--data", str(folder), "--task", tasks[0].id, "--k", "9"]) == 2
    assert "fewer than the 9 neighbours" in capsys.readouterr().err
