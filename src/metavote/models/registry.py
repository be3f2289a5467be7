"""Building models by name: architectures (:func:`create_model`) and pre-trained backbones
(:func:`load_named`, ``metavote backbones``).

Two kinds of names:

- **Architectures** (:data:`~metavote.models.base.MODELS`, :func:`~metavote.models.base.register_model`)
  build a model with fresh weights from its config, ``{"arch": name, **settings}``: what a zoo record,
  a standalone file or an ONNX export rebuilds before loading its own weights.
- **Backbones** (:data:`BACKBONES`, :func:`register_backbone`) give a *pre-trained* model with its
  weights and metadata, at an input size: ``--backbone efficientnet-lite0``. A backbone can also be
  named by an importable constructor, ``py:MODULE:FUNCTION`` (a function of no argument, or of
  ``image_size``, returning a :class:`~metavote.models.base.Backbone` or a plain classifier, which is
  wrapped as a :class:`~metavote.models.traced.TracedModel`), and a package can register its own
  under the entry-point group ``metavote.backbones`` (``name = "module:function"``, the same kind of
  function). Zoo workers, standalone files, ``export`` and ``predict`` rebuild such a model from
  its config, so nothing needs the user's script.

A constructor that does not import, returns no classifier, or whose weights do not fit is one line
(:class:`~metavote.errors.ConfigError` / :class:`~metavote.errors.CheckpointError`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import torch
from torch import nn

from ..errors import ConfigError, one_line
from ..files import file_digest
from .base import MODELS, Backbone
from .traced import TracedModel

PY_PREFIX = "py:"
ENTRY_POINT_GROUP = "metavote.backbones"


def import_constructor(spec: str) -> Callable:
    """The function a ``py:MODULE:FUNCTION`` spec (or ``MODULE:FUNCTION``) names, or one line saying why not."""
    target = spec[len(PY_PREFIX):] if spec.startswith(PY_PREFIX) else spec
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{spec!r} does not name a constructor: write py:MODULE:FUNCTION (e.g. py:mypkg.models:make_net)")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 (ImportError, and whatever the module raises while importing)
        raise ConfigError(f"cannot import {module_name} for backbone {spec} ({type(e).__name__}: {one_line(e, 200)})") from e
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"module {module_name} has no {attr!r} (backbone {spec})")
    if not callable(fn):
        raise ConfigError(f"{spec}: {attr} is not callable")
    return fn


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _call_constructor(spec: str, fn: Callable, image_size: int | None, settings: dict) -> Backbone:
    """Call a backbone constructor and make its result a :class:`Backbone`."""
    kwargs = dict(settings)
    if image_size is not None and _accepts(fn, "image_size"):
        kwargs["image_size"] = image_size
    try:
        out = fn(**kwargs)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 (whatever the user's constructor raises)
        raise ConfigError(f"backbone {spec}: its constructor failed ({type(e).__name__}: {one_line(e, 200)})") from e
    if isinstance(out, tuple) and out and isinstance(out[0], nn.Module):
        out = out[0]
    if isinstance(out, Backbone):
        return out
    if not isinstance(out, nn.Module):
        raise ConfigError(f"backbone {spec}: the constructor returned a {type(out).__name__}, not a classifier (an nn.Module)")
    size = image_size or 224
    return TracedModel(out, input_size=(3, size, size))


def create_model(config: dict | str, num_classes: int | None = None, **overrides) -> Backbone:
    """A model from its config (``{"arch": name, **settings}``, as ``model.config`` gives it) or a name.

    ``arch`` is a registered architecture, or ``py:MODULE:FUNCTION`` (the constructor is called
    again; a plain classifier it returns is wrapped as the config's ``wrap`` says)."""
    config = {"arch": config} if isinstance(config, str) else dict(config)
    arch = config.pop("arch", None)
    settings = config | overrides
    wrap = settings.pop("wrap", None)  # how a plain nn.Module is wrapped (a traced model's config)
    rebuild = {"arch": arch, **settings}
    if isinstance(arch, str) and arch.startswith(PY_PREFIX):
        fn = import_constructor(arch)
        size = settings.pop("image_size", None)
        with torch.device("cpu"):
            model = _call_constructor(arch, fn, size, settings)
        if isinstance(model, TracedModel) and wrap is not None:
            model = TracedModel(model.unwrapped(), **wrap, config=rebuild | ({"image_size": size} if size else {}))
        if num_classes is not None and model.num_classes != num_classes:
            model.reset_classifier(num_classes)
        return model
    if arch not in MODELS:
        raise ConfigError(f"unknown architecture {arch!r}; choose from {', '.join(sorted(MODELS))}")
    if num_classes is not None:
        settings["num_classes"] = num_classes
    try:
        model = MODELS[arch](**settings)
    except TypeError as e:
        raise ConfigError(f"bad settings for {arch}: {e}") from e
    if isinstance(model, Backbone) and wrap is None:
        return model
    return TracedModel(model, **(wrap or {}), config=rebuild)


# ----------------------------------------------------------------------------- named backbones


@dataclass(frozen=True)
class NamedBackbone:
    """A pre-trained backbone that ``--backbone NAME`` gives.

    ``load(image_size)`` returns the model with its weights loaded, at that input size (None: the
    model's own), and a dict of what it knows: ``classes`` (the pre-training's class names, in head
    order), ``wnids`` (their WordNet ids), ``dataset``, ``weights`` (the file the weights came
    from, whose digest is the backbone's fingerprint). ``extra``: the pip extra that installs it."""

    name: str
    load: Callable[[int | None], tuple[Backbone, dict]]
    summary: str
    default_size: int
    extra: str | None = None
    available: Callable[[], str | None] = lambda: None
    """None when its packages import, else why not (one line)."""


BACKBONES: dict[str, NamedBackbone] = {}
"""The pre-trained backbones by name (see :func:`register_backbone`)."""


def register_backbone(backbone: NamedBackbone) -> NamedBackbone:
    """Make ``--backbone NAME`` give this pre-trained backbone."""
    BACKBONES[backbone.name] = backbone
    return backbone


def _entry_point_backbones() -> dict[str, str]:
    """Backbones that installed packages register under the ``metavote.backbones`` entry-point group."""
    try:
        return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    except Exception:  # noqa: BLE001 (a broken distribution's metadata must not break the CLI)
        return {}


def is_backbone_name(spec: str) -> bool:
    """Whether ``spec`` names a backbone (a registered name, a package's, or ``py:...``) rather than a file."""
    return spec.startswith(PY_PREFIX) or spec in BACKBONES or spec in _entry_point_backbones()


def list_backbones() -> list[dict]:
    """Every named backbone: name, summary, default input size, where it comes from, and whether it can load here."""
    rows = [{"name": b.name, "summary": b.summary, "image_size": b.default_size, "source": "metavote"
             + (f" [{b.extra}]" if b.extra else ""), "missing": b.available()} for b in BACKBONES.values()]
    rows += [{"name": name, "summary": f"py:{value}", "image_size": None, "source": "entry point", "missing": None}
             for name, value in _entry_point_backbones().items() if name not in BACKBONES]
    return rows


def _state_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_named(spec: str, image_size: int | None = None) -> tuple[Backbone, dict]:
    """A named backbone (``efficientnet-lite0``, a package's entry point, ``py:MODULE:FUNCTION``)
    with its weights, at ``image_size`` (None: its own), and its metadata as
    :func:`~metavote.models.load_backbone` returns it. The fingerprint covers the weights and the
    input size: a zoo built at one size refuses records made at another."""
    if image_size is not None and not 8 <= int(image_size) <= 4096:
        raise ConfigError(f"image size must be in 8..4096 pixels, got {image_size}")
    if spec in BACKBONES:
        named = BACKBONES[spec]
        missing = named.available()
        if missing:
            raise ConfigError(f"backbone {spec} needs {missing}" + (f": pip install 'metavote[{named.extra}]'" if named.extra else ""))
        model, info = named.load(image_size)
        weights = info.get("weights")
        digest = file_digest(weights) if weights else _state_digest(model)
    else:
        target = _entry_point_backbones().get(spec)
        fn = import_constructor(target if target else spec)
        arch = spec if spec.startswith(PY_PREFIX) else f"{PY_PREFIX}{target}"
        model = _call_constructor(spec, fn, image_size, {})
        if isinstance(model, TracedModel):  # a plain classifier: rebuilt by calling the constructor again
            wrap = model.wrap_settings() | ({"input_size": [3, int(image_size), int(image_size)]} if image_size else {})
            model = TracedModel(model.unwrapped(), **wrap, config={"arch": arch} | ({"image_size": int(image_size)} if image_size else {}))
        info = {"classes": getattr(model, "pretrained_classes", None)}
        digest = _state_digest(model)
    try:
        config = model.config
    except ConfigError as e:
        raise ConfigError(f"backbone {spec}: {e}") from e
    fingerprint = hashlib.sha256(f"{digest}:{tuple(model.input_size)}".encode()).hexdigest()
    meta = {"config": config, "arch": config["arch"], "fingerprint": fingerprint, "input_size": list(model.input_size),
            "classes": info.get("classes"), "wnids": info.get("wnids"), "dataset": info.get("dataset"), "backbone": spec}
    return model.eval(), meta


def check_runs(model: Backbone, what: str = "the backbone") -> None:
    """One line, before any task starts, when ``model`` does not run at its own input size."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.rand(2, *model.input_size, generator=torch.Generator().manual_seed(0)).to(model.mean.device))
    except Exception as e:  # noqa: BLE001 (whatever the model's own forward raises)
        raise ConfigError(f"{what} does not run at its input size {tuple(model.input_size)[1:]} "
                          f"({type(e).__name__}: {one_line(e, 200)}); choose another --image-size") from e
    finally:
        model.train(was_training)


__all__ = ["BACKBONES", "NamedBackbone", "check_runs", "create_model", "import_constructor", "is_backbone_name", "list_backbones",
           "load_named", "register_backbone"]
