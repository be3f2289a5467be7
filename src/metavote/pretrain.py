"""Pre-training of backbones: supervised (SGD + Nesterov, cutout, one-cycle or cosine) and SimSiam.

Both are resumable: at the end of every epoch the model, optimiser, data-order generator and
history are written atomically to a checkpoint; re-running the same command continues from the
last finished epoch and produces the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import Augment, BatchLoader, ImageDataset, iterate_eval
from .errors import CheckpointError, ConfigError, one_line
from .files import atomic_path
from .models import CIFAR100_MEAN, CIFAR100_STD, Backbone, create_model, save_weights
from .models.hf import save_hf, scratch_init
from .training import Timer, cosine_lr, evaluate, set_lr, sgd

METHODS = ("supervised", "simsiam")


@dataclass
class PretrainConfig:
    """What to pre-train and how. Defaults reproduce the shared width-0.5 CIFAR-100 backbone."""

    method: str = "supervised"
    arch: str = "cifar_resnet18"
    width: float = 0.5
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    cutout: int = 16
    seed: int = 0
    hf_config: dict | None = None
    """With ``arch="hf"``: the Hugging Face image classifier's config (``model_type`` and settings),
    trained as a traced model and written as a ``save_pretrained`` folder."""

    def validate(self) -> None:
        if (self.arch == "hf") != (self.hf_config is not None):
            raise ConfigError("a Hugging Face pre-training needs arch 'hf' and its hf_config, together")
        if self.hf_config is not None and self.method != "supervised":
            raise ConfigError("a Hugging Face classifier is pre-trained supervised (SimSiam needs a headless encoder)")
        if self.hf_config is not None and "model_type" not in self.hf_config:
            raise ConfigError("the Hugging Face config needs its model_type (mobilenet_v2, convnext, vit, ...)")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.schedule not in ("onecycle", "cosine"):
            raise ConfigError(f"schedule must be 'onecycle' or 'cosine', got {self.schedule!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 < self.width <= 8:
            raise ConfigError(f"width must be in (0, 8], got {self.width}")
        if not 0 <= self.seed < 2**31:
            raise ConfigError(f"seed must be in [0, 2^31), got {self.seed}")


@dataclass
class PretrainResult:
    path: Path
    accuracy: float
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0


def one_cycle_lr(step: int, total: int, peak: float, warmup: float = 0.3) -> float:
    """Linear warm-up from peak/25 over the first ``warmup`` of training, then cosine to ~0."""
    up = max(1, int(total * warmup))
    if step < up:
        return peak / 25 + (peak - peak / 25) * step / up
    return cosine_lr(step - up, total - up, peak, final_fraction=1e-4)


# ----------------------------------------------------------------------------- SimSiam


class SimSiam(nn.Module):
    """Encoder + projector + predictor (Chen & He 2020), sized to the encoder's feature width."""

    def __init__(self, encoder: Backbone, dim: int | None = None) -> None:
        super().__init__()
        f = encoder.num_features
        dim = dim or max(512, 2 * f)
        self.encoder = encoder
        self.projector = nn.Sequential(
            nn.Linear(f, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(dim, dim // 4, bias=False), nn.BatchNorm1d(dim // 4), nn.ReLU(inplace=True), nn.Linear(dim // 4, dim)
        )

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Symmetric negative cosine similarity with stop-gradient on the projections."""
        z1, z2 = self.projector(self.encoder.features(x1)), self.projector(self.encoder.features(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return -0.5 * (F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean())


def simsiam_view(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One SimSiam view of a [0, 1] NCHW batch, all ops batched: random resized crop (scale 0.2-1,
    ratio 3/4-4/3), flip, colour jitter 0.4 (brightness, contrast, saturation; p=0.8), greyscale (p=0.2)."""
    b = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=generator)  # noqa: E731
    area, log_ratio = u(0.2, 1.0), u(math.log(3 / 4), math.log(4 / 3))
    sx = (area * log_ratio.exp()).sqrt().clamp(max=1.0)
    sy = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    tx, ty = u(-1, 1) * (1 - sx), u(-1, 1) * (1 - sy)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx * flip, tx, sy, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    jitter = (torch.rand(b, generator=generator) < 0.8).view(b, 1, 1, 1)
    grey = lambda t: (0.299 * t[:, :1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:]).expand_as(t)  # noqa: E731
    bright, contrast, sat = (u(0.6, 1.4).view(b, 1, 1, 1) for _ in range(3))
    y = x * bright
    y = (y - y.mean((1, 2, 3), keepdim=True)) * contrast + y.mean((1, 2, 3), keepdim=True)
    y = (y - grey(y)) * sat + grey(y)
    x = torch.where(jitter, y.clamp(0, 1), x)
    to_grey = (torch.rand(b, generator=generator) < 0.2).view(b, 1, 1, 1)
    return torch.where(to_grey, grey(x), x)


@torch.no_grad()
def knn_accuracy(encoder: Backbone, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], k: int = 20, temperature: float = 0.1) -> float:
    """Weighted k-NN accuracy (cosine similarity, exp(s/T) votes) of an encoder's features."""
    encoder.eval()

    def feats(images: np.ndarray) -> torch.Tensor:
        return F.normalize(torch.cat([encoder.features(x) for x, _ in iterate_eval(images, np.zeros(len(images), np.int64))]), dim=1)

    bank, bank_y = feats(train[0]), torch.as_tensor(train[1])
    n_classes = int(bank_y.max()) + 1
    correct = 0
    for q, y in zip(feats(test[0]).split(1000), torch.as_tensor(test[1]).split(1000)):
        sim, idx = (q @ bank.T).topk(min(k, len(bank)), dim=1)
        votes = torch.zeros(len(q), n_classes).scatter_add_(1, bank_y[idx], (sim / temperature).exp())
        correct += int((votes.argmax(1) == y).sum())
    return correct / len(test[1])


# ----------------------------------------------------------------------------- the loop


def default_checkpoint_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.resume.pt")


def pretrain(
    dataset: ImageDataset,
    out: str | os.PathLike,
    config: PretrainConfig | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> PretrainResult:
    """Pre-train a backbone on ``dataset`` and write it to ``out`` (safetensors with metadata).

    Supervised training reports test top-1; SimSiam reports weighted k-NN top-1 (k = 20) and
    writes a headless encoder. Interrupting and re-running with ``resume=True`` continues.
    """
    config = config or PretrainConfig()
    config.validate()
    device = torch.device(device)
    ckpt_path = Path(checkpoint) if checkpoint else default_checkpoint_path(out)
    torch.manual_seed(config.seed)
    supervised = config.method == "supervised"
    if config.arch == "hf":  # normalised like the CIFAR backbones, at the dataset's image size
        size = dataset.train_images.shape[1]
        model = create_model({"arch": "hf", "hf_config": config.hf_config, "wrap": {"input_size": [3, size, size], "mean": list(CIFAR100_MEAN),
                                                                                    "std": list(CIFAR100_STD)}}, dataset.num_classes)
        scratch_init(model)
    else:
        model = create_model({"arch": config.arch, "width": config.width}, dataset.num_classes if supervised else 0)
    net: nn.Module = model if supervised else SimSiam(model)
    net.to(device)
    base_lr = config.lr if supervised else config.lr * config.batch_size / 256
    optimizer = sgd(net, base_lr, weight_decay=config.weight_decay, nesterov=supervised)
    augment = Augment(padding=4, flip=True, cutout=config.cutout) if supervised else Augment.none()
    loader = BatchLoader(dataset.train_images, dataset.train_labels, config.batch_size, augment, config.seed)
    total = config.epochs * len(loader)
    schedule = (lambda s: one_cycle_lr(s, total, base_lr)) if config.schedule == "onecycle" else (lambda s: cosine_lr(s, total, base_lr))
    cfg_json = json.dumps(asdict(config) | {"dataset": dataset.name, "classes": dataset.classes, "n_train": len(dataset.train_labels)}, sort_keys=True)

    start, history = 0, []
    if resume and ckpt_path.exists():
        try:
            state = torch.load(ckpt_path, map_location=device, weights_only=True)
            saved_config = state["config"]
        except (RuntimeError, OSError, EOFError, KeyError, IndexError, TypeError, pickle.UnpicklingError) as e:
            raise CheckpointError(f"resume checkpoint {ckpt_path} is unreadable ({type(e).__name__}: {one_line(e)}); delete it or pass --fresh") from e
        if saved_config != cfg_json:
            raise CheckpointError(f"resume checkpoint {ckpt_path} was written for a different configuration; pass --fresh to start over")
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        loader.generator.set_state(state["generator"])
        start, history = int(state["epoch"]), json.loads(state["history"])

    bar = tqdm(total=total, initial=start * len(loader), desc=f"pretrain {config.method}", unit="step", disable=not progress, dynamic_ncols=True)
    step = start * len(loader)
    for epoch in range(start, config.epochs):
        net.train()
        losses = []
        with Timer() as timer:
            for x, y in loader.epoch():
                x, y = x.to(device), y.to(device)
                set_lr(optimizer, schedule(step))
                if supervised:
                    loss = F.cross_entropy(net(x), y)
                else:
                    g = loader.generator
                    loss = net.loss(simsiam_view(x, g), simsiam_view(x, g))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}", refresh=False)
        if supervised:
            acc = evaluate(model, dataset.test_images, dataset.test_labels)
        else:
            acc = knn_accuracy(model, (dataset.train_images, dataset.train_labels), (dataset.test_images, dataset.test_labels))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "test_acc": acc, "secs": timer.seconds})
        bar.write(f"epoch {epoch + 1}/{config.epochs}: loss {np.mean(losses):.4f}, {'test' if supervised else 'k-NN'} top-1 {acc:.2%}")
        with atomic_path(ckpt_path) as tmp:
            torch.save(
                {"net": net.state_dict(), "optimizer": optimizer.state_dict(), "generator": loader.generator.get_state(),
                 "epoch": epoch + 1, "history": json.dumps(history), "config": cfg_json},
                tmp,
            )
    bar.close()

    accuracy = history[-1]["test_acc"]
    metadata = {
        "arch": config.arch, "width": config.width, "dataset": dataset.name, "classes": dataset.classes if supervised else None,
        "num_classes": model.num_classes, "method": config.method, "epochs": config.epochs,
        "mean": model.mean.flatten().tolist(), "std": model.std.flatten().tolist(),
        ("test_acc" if supervised else "knn_acc"): accuracy, "history": history,
    }
    if config.arch == "hf":
        save_hf(out, model, dataset.classes, {"pretrain": asdict(config), **metadata})
    else:
        save_weights(out, model, metadata)
    ckpt_path.unlink(missing_ok=True)
    return PretrainResult(Path(out), accuracy, history, resumed_from_epoch=start)
