"""GPU paths: the same seeded batches on every device, and every method end to end on CUDA.

Skipped where no CUDA device is present (as in CI); `benchmarks/gpu/gpu_paper.py` runs them first on
a GPU machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metavote.data import Augment, BatchLoader
from metavote.methods import IFP, MVP, RandomPruning
from metavote.models import load_backbone
from metavote.similarity import LEEPSimilarity
from metavote.zoo import Zoo

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_loader_gives_the_same_batches_on_cuda():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), rng.integers(0, 5, 40)
    aug = Augment(padding=4, flip=True, cutout=8)
    on_cpu = iter(BatchLoader(images, labels, 16, aug, seed=3))
    on_gpu = iter(BatchLoader(images, labels, 16, aug, seed=3, device="cuda"))
    for _ in range(4):  # crosses an epoch boundary
        (xc, yc), (xg, yg) = next(on_cpu), next(on_gpu)
        # the same crops, flips and cutouts; only /255 may round differently (measured: 6e-8 at most)
        assert xg.is_cuda and torch.allclose(xc, xg.cpu(), rtol=0, atol=1e-6) and torch.equal(yc, yg.cpu())


@cuda
def test_every_method_runs_on_cuda(small_zoo, tmp_path):
    zoo, dataset, _, tasks = small_zoo
    backbone = load_backbone(zoo.root.parent / "backbone.safetensors")[0].cuda()
    target = next(t for t in (dataset.task(dataset.classes[i:i + 3]) for i in range(4)) if t not in tasks)
    data = dataset.load_task(target)
    zoo.to("cuda")
    assert next(zoo.load(zoo.records()[0])[0].parameters()).is_cuda
    assert np.isfinite(LEEPSimilarity().scores(zoo, zoo.records(), data)).all()
    results = [MVP(neighbours=2, ratio=0.5, iterations=4, batch_size=8).run(backbone, data, zoo, None),
               IFP(ratio=0.5, iterations=4, batch_size=8, importance="taylor").run(backbone, data, None, None),
               RandomPruning(ratio=0.5, iterations=4, batch_size=8).run(backbone, data, None, None)]
    zoo.to("cpu")  # neighbours loaded on the CPU are moved to the backbone's device
    results.append(MVP(neighbours=2, ratio=0.5, iterations=4, batch_size=8).run(backbone, data, zoo, None))
    for result in results:
        assert next(result.model.parameters()).is_cuda
        assert result.costs.iterations == 4 and result.costs.flops > 0 and 0 <= result.accuracy <= 1
    with Zoo(tmp_path / "gpu-zoo", {"fingerprint": zoo.fingerprint, **zoo.meta}) as saved:
        record = saved.add(target, results[0])
        model, _ = saved.load(record)  # written from CUDA tensors, read back on the CPU
        assert not next(model.parameters()).is_cuda
        assert torch.allclose(model.fc.weight, results[0].model.fc.weight.cpu())
