"""Any ``nn.Module`` classifier as a :class:`Backbone`: units traced from its graph (:mod:`.trace`).

:class:`TracedModel` wraps a network (``net``) and lifts its final linear classifier out as
``head``, so the network itself returns the pooled pre-logits features and every method, the zoo,
the standalone file and ONNX export see the same face as for the hand-written families::

    net = MyCNN(num_classes=100); net.load_state_dict(torch.load("my_cnn.pt", weights_only=True))
    model = metavote.wrap_model(net, input_size=(3, 32, 32), mean=CIFAR100_MEAN, std=CIFAR100_STD)
    model.unit_groups()          # traced once, kept up to date when the model is shrunk

To rebuild it from a config (zoo records, standalone files), the network's constructor must be
registered: ``@register_model("my_cnn")`` on a function ``(num_classes, **settings) -> nn.Module``,
and ``wrap_model(net, arch="my_cnn", settings={...})``. Hugging Face ``*ForImageClassification``
models are registered as ``hf`` (:mod:`.hf`).

Its capabilities (:meth:`Backbone.capabilities`) are read off the traced groups, so methods run
on whatever the model has.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .base import IMAGENET_MEAN, IMAGENET_STD, Backbone
from .trace import Trace, trace_unit_groups
from .units import UnitGroup

_TRACES: dict[str, Trace] = {}  # one trace per architecture and size (zoo records rebuild the same model often)


def _last_linear(net: nn.Module) -> str:
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(f"{type(net).__name__} has no nn.Linear classifier; name it with classifier=")
    return names[-1]


class TracedModel(Backbone):
    """A wrapped classifier whose unit groups are traced (see the module docstring).

    ``classifier``: the module name of its final ``nn.Linear`` (default: the last one registered).
    ``input_size``, ``mean``, ``std``: what it expects (images in [0, 1] are normalised inside).
    ``heads``: head counts of attention modules that do not say theirs; ``ignore``: modules whose
    channels stay whole (both by their names in ``net``). ``config``: what rebuilds it with :func:`~metavote.create_model`.
    """

    family = "traced"
    classifier_name = "head"

    def __init__(self, net: nn.Module, classifier: str | None = None, *, input_size: Sequence[int] = (3, 224, 224),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, heads: Mapping[str, int] | None = None,
                 ignore: Iterable[str] = (), config: dict | None = None) -> None:
        input_size = tuple(int(s) for s in input_size)
        if len(input_size) != 3 or input_size[0] != 3:
            raise ConfigError(f"input_size must be (3, height, width), got {input_size}")
        super().__init__(mean, std, input_size)
        classifier = classifier or getattr(net, "metavote_classifier", None) or _last_linear(net)
        try:
            head = net.get_submodule(classifier)
        except AttributeError as e:
            raise ConfigError(f"{type(net).__name__} has no module {classifier!r} to use as its classifier") from e
        if not isinstance(head, nn.Linear):
            raise ConfigError(f"the classifier {classifier!r} is a {type(head).__name__}, not an nn.Linear")
        net.set_submodule(classifier, nn.Identity())
        self.net, self.head = net, head
        self.heads, self.ignore = dict(heads or {}), tuple(ignore)
        self._features = head.in_features
        wrap = {"classifier": classifier, "input_size": list(input_size), "mean": list(map(float, mean)), "std": list(map(float, std))}
        wrap |= {"heads": self.heads} if self.heads else {}
        wrap |= {"ignore": list(self.ignore)} if self.ignore else {}
        self._config = dict(config or {"arch": None}) | {"wrap": wrap}
        self._trace: Trace | None = None

    # -- forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(self.normalize(x))
        if not isinstance(out, torch.Tensor):  # Hugging Face outputs carry the (here: pre-logits) features as logits (or first)
            out = out.logits if getattr(out, "logits", None) is not None else out[0]
        return out.flatten(1) if out.dim() > 2 else out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    @property
    def num_features(self) -> int:
        return self.head.in_features if isinstance(self.head, nn.Linear) else self._features

    # -- description
    def trace(self) -> Trace:
        """The traced groups and what was left whole: traced once per architecture and process (on a
        seeded random input of the model's size), kept up to date as the model is shrunk."""
        if self._trace is None:
            shapes = [(k, tuple(v.shape)) for k, v in self.state_dict().items() if not k.startswith("head.")]
            key = json.dumps([self._config, shapes], sort_keys=True, default=str)
            if key not in _TRACES:
                example = torch.rand(2, *self.input_size, generator=torch.Generator().manual_seed(0)).to(self.mean.device)
                heads = {f"net.{k}": v for k, v in self.heads.items()}
                _TRACES[key] = trace_unit_groups(self, example, "head", heads, [f"net.{k}" for k in self.ignore])
            self._trace = _TRACES[key]
        return self._trace

    def unit_groups(self) -> list[UnitGroup]:
        return list(self.trace().groups)

    def shrunk_from(self, groups: Sequence[UnitGroup], sizes: dict[str, int]) -> None:
        self._features = self.num_features
        if self._trace is not None:
            self._trace = dataclasses.replace(self._trace, groups=[dataclasses.replace(g, size=sizes.get(g.name, g.size))
                                                                   for g in self._trace.groups])

    def body_blocks(self) -> list[list[nn.Parameter]]:
        raise ConfigError("freezing blocks needs a model that lists its blocks; a traced model does not")

    def unwrapped(self) -> nn.Module:
        """The plain network, its classifier put back (this model is not usable after): what
        ``TracedModel(model.unwrapped(), **settings)`` wraps again with other settings."""
        self.net.set_submodule(self.wrap_settings()["classifier"], self.head)
        return self.net

    def wrap_settings(self) -> dict:
        """How the network is wrapped (classifier, input size, normalisation, heads, ignored modules):
        ``TracedModel(net, **model.wrap_settings())`` wraps it again."""
        return dict(self._config["wrap"])

    @property
    def config(self) -> dict:
        if self._config.get("arch") is None:
            raise ConfigError("this wrapped model cannot be rebuilt: register its constructor with @register_model(name) "
                              "and wrap it with wrap_model(net, arch=name, settings=...)")
        return dict(self._config)


def wrap_model(net: nn.Module, classifier: str | None = None, *, input_size: Sequence[int] = (3, 224, 224),
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, heads: Mapping[str, int] | None = None,
               ignore: Iterable[str] = (), arch: str | None = None, settings: dict | None = None) -> TracedModel:
    """Any classifier as a metavote model (:class:`TracedModel`); ``arch`` and ``settings`` name
    the registered constructor that rebuilds it (needed for zoos and standalone files)."""
    return TracedModel(net, classifier, input_size=input_size, mean=mean, std=std, heads=heads, ignore=ignore,
                       config={"arch": arch, **(settings or {})})
