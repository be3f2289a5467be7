"""Cutting layers by type: the one place that knows how a layer is cut to fewer channels.

Layers are cut by a table keyed by layer type (Torch-Pruning's pruner box, :data:`CUTTERS`): each
entry cuts its layer in place (on the copy :func:`shrink` made) to some output and some input
indices, so a subclass keeps its own class and forward; :func:`register_cutter` adds a type, and what
a cutter leaves is checked. Which indices a group's units are comes from its slots, so the same
code cuts CNN channels, ViT heads (a ``qkv`` of fewer heads), MLP nodes and bare parameters.
:func:`zero_units` silences units in place instead.

It lives in ``models`` beside :mod:`.units`, because both the tracer (:mod:`.trace`, whose
cut-out check cuts and zeroes) and :mod:`metavote.pruning.surgery` (extraction, masking) need it:
neither imports the other.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import Backbone
from .units import IN, OUT, PARAM, UnitGroup

Index = torch.Tensor | None


def _param(p: torch.Tensor | None, idx: Index, dim: int = 0) -> nn.Parameter | None:
    """``p`` cut along ``dim`` to ``idx`` (None keeps all), as a new parameter of the same trainability."""
    if p is None or idx is None:
        return p
    return nn.Parameter(p.detach().index_select(dim, idx.to(p.device)), requires_grad=p.requires_grad)  # a new tensor


def _cut_conv(m: nn.modules.conv._ConvNd, out_idx: Index, in_idx: Index) -> None:
    """Convolutions of any dimension. A grouped (or depthwise) one is cut either by whole groups of
    outputs (``out_idx`` covers complete groups, whose inputs go with them: no ``in_idx``), or by the
    same channels inside every group, its group count kept (as a channel shuffle between grouped
    convolutions needs): ``out_idx`` keeps as many outputs in every group, and ``in_idx`` are
    positions inside each group, the weight's dim 1, as the slot of a grouped convolution's inputs
    gives them (:func:`~metavote.models.trace.trace_unit_groups`)."""
    if m.groups > 1 and out_idx is not None:
        per_group = m.out_channels // m.groups
        counts = torch.bincount(out_idx.cpu() // per_group, minlength=m.groups)
        if in_idx is None and not (counts % per_group).any():  # whole groups: their inputs go with them
            m.groups = int((counts > 0).sum())
        elif not (counts == counts[0]).all():
            raise ConfigError(f"cutting a grouped convolution to {len(out_idx)} outputs breaks its groups of {per_group}")
    m.weight = _param(_param(m.weight, out_idx), in_idx, 1)
    m.bias = _param(m.bias, out_idx)
    m.out_channels, m.in_channels = m.weight.shape[0], (m.weight.shape[1] * m.groups)


def _cut_linear(m: nn.Linear, out_idx: Index, in_idx: Index) -> None:
    m.weight = _param(_param(m.weight, out_idx), in_idx, 1)
    m.bias = _param(m.bias, out_idx)
    m.out_features, m.in_features = m.weight.shape


def _cut_batchnorm(m: nn.modules.batchnorm._BatchNorm, out_idx: Index, in_idx: Index) -> None:
    if out_idx is None:
        return
    m.weight, m.bias = _param(m.weight, out_idx), _param(m.bias, out_idx)
    for key in ("running_mean", "running_var"):
        if getattr(m, key) is not None:
            setattr(m, key, getattr(m, key).index_select(0, out_idx.to(getattr(m, key).device)))
    m.num_features = len(out_idx)


def _cut_layernorm(m: nn.LayerNorm, out_idx: Index, in_idx: Index) -> None:
    if out_idx is None:
        return
    if len(m.normalized_shape) != 1:
        raise ConfigError(f"cannot cut a LayerNorm over {len(m.normalized_shape)} dimensions")
    m.weight, m.bias = _param(m.weight, out_idx), _param(m.bias, out_idx)
    m.normalized_shape = (len(out_idx),)


def _cut_groupnorm(m: nn.GroupNorm, out_idx: Index, in_idx: Index) -> None:
    """A GroupNorm of one group (LayerNorm over channels) or of one group per channel; others would
    need whole groups of channels."""
    if out_idx is None:
        return
    if m.num_groups not in (1, m.num_channels):
        raise ConfigError(f"cannot cut a GroupNorm of {m.num_groups} groups over {m.num_channels} channels")
    m.num_groups = 1 if m.num_groups == 1 else len(out_idx)
    m.weight, m.bias = _param(m.weight, out_idx), _param(m.bias, out_idx)
    m.num_channels = len(out_idx)


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with fewer heads than its model width allows: the packed
    ``in_proj_weight`` holds ``3 * heads * head_dim`` rows (q, k, v one after the other) and
    ``out_proj`` reads ``heads * head_dim`` columns, while queries, keys and values keep the token
    width. PyTorch's own forward (and ``nn.TransformerEncoderLayer``'s fused fast path) assumes
    ``heads * head_dim == embed_dim``, so a cut module takes this class: the same arithmetic
    (scaled dot-product attention per head, the same masks, dropout and returned weights), written
    for any head count. State-dict keys are unchanged. ``_qkv_same_embed_dim`` is False so that
    PyTorch's fast paths, which read the packed weights as full-size, are never taken."""

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = True, attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = key_padding_mask.unsqueeze(0) if key_padding_mask is not None else None
        if self.batch_first:  # to (batch, tokens, width)
            q_in, k_in, v_in = query, key, value
        else:
            q_in, k_in, v_in = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        b, n_q, n_k = q_in.shape[0], q_in.shape[1], k_in.shape[1]
        heads, d = self.num_heads, self.head_dim
        w = self.in_proj_weight.chunk(3)
        bias = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        q, k, v = (F.linear(t, wi, bi).view(b, t.shape[1], heads, d).transpose(1, 2) for t, wi, bi in zip((q_in, k_in, v_in), w, bias))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(1)
        if attn_mask is not None:
            mask = attn_mask.view(b, heads, n_q, n_k) if attn_mask.dim() == 3 else attn_mask
            scores = scores.masked_fill(mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        if key_padding_mask is not None:
            pad = key_padding_mask.view(b, 1, 1, n_k)
            scores = scores.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else scores + pad
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(b, n_q, heads * d))
        out = out if self.batch_first else out.transpose(0, 1)
        out = out.squeeze(1) if unbatched else out
        if not need_weights:
            return out, None
        weights = weights.mean(1) if average_attn_weights else weights
        return out, (weights.squeeze(0) if unbatched else weights)


def _cut_multihead_attention(m: nn.MultiheadAttention, out_idx: Index, in_idx: Index) -> None:
    """Heads of ``nn.MultiheadAttention``: ``out_idx`` are rows of the packed q, k, v projection
    (``head_dim`` rows of each per head); the token width (its inputs) is never cut here."""
    if in_idx is not None:
        raise ConfigError("the token width of nn.MultiheadAttention is not cut (its heads are)")
    if not m._qkv_same_embed_dim and not isinstance(m, PrunedMultiheadAttention):
        raise ConfigError("an nn.MultiheadAttention with separate q, k, v weights (kdim or vdim set) is left whole")
    if out_idx is None:
        return
    m.in_proj_weight = _param(m.in_proj_weight, out_idx)
    m.in_proj_bias = _param(m.in_proj_bias, out_idx)
    m.__class__ = PrunedMultiheadAttention
    m._qkv_same_embed_dim = False


Cutter = Callable[[nn.Module, Index, Index], None]
CUTTERS: dict[type, Cutter] = {
    nn.modules.conv._ConvNd: _cut_conv, nn.Linear: _cut_linear, nn.modules.batchnorm._BatchNorm: _cut_batchnorm,
    nn.LayerNorm: _cut_layernorm, nn.GroupNorm: _cut_groupnorm, nn.MultiheadAttention: _cut_multihead_attention,
}
"""How each layer type is cut, in place: ``cutter(module, out_idx, in_idx)`` keeps those output and
input indices (None keeps all) and updates the module's sizes. Looked up along the type's MRO, so a
subclass (Hugging Face's ``ConvNextLayerNorm``, a custom ``Linear``) is cut like its base and keeps
its own class and behaviour. Add a layer type with :func:`register_cutter`."""


def register_cutter(layer_type: type, cutter: Cutter) -> None:
    """Teach :func:`cut` (and so extraction) a custom layer type: ``cutter(module, out_idx, in_idx)``
    cuts ``module`` in place to those output and input indices (either may be None: keep all)."""
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise ConfigError(f"a cutter is registered for an nn.Module subclass, not {layer_type!r}")
    CUTTERS[layer_type] = cutter


def find_cutter(module: nn.Module) -> Cutter | None:
    """The cutter of ``module``'s type or of its nearest base class that has one."""
    return next((CUTTERS[t] for t in type(module).__mro__ if t in CUTTERS), None)


def cut_(module: nn.Module, out_idx: Index, in_idx: Index, name: str = "") -> None:
    """Cut ``module`` in place to the given output and input indices, checking what the cutter did."""
    cutter = find_cutter(module)
    if cutter is None:
        raise ConfigError(f"cannot cut {name or 'a'} {type(module).__name__}: no cutter for this layer type "
                          f"(known: {', '.join(t.__name__ for t in CUTTERS)}; add one with metavote.register_cutter)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")  # a layer of a fully pruned group
        cutter(module, out_idx, in_idx)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        want = [len(out_idx) if out_idx is not None else None, len(in_idx) if in_idx is not None else None]
        got = [weight.shape[0], weight.shape[1] if weight.dim() > 1 else None]
        bad = [(w, g) for w, g in zip(want, got) if w is not None and g is not None and w != g]
        if bad and not (getattr(module, "groups", 1) > 1 and in_idx is None):
            raise ConfigError(f"the cutter of {type(module).__name__} left {name or 'the layer'}'s weight at {tuple(weight.shape)}, "
                              f"expected {want[0]} outputs and {want[1]} inputs")


def cut(module: nn.Module, out_idx: Index, in_idx: Index) -> nn.Module:
    """A copy of ``module`` with only the given output and input indices (None keeps all)."""
    small = copy.deepcopy(module)
    cut_(small, out_idx, in_idx)
    return small


HEAD_ATTRIBUTES = ("num_heads", "num_attention_heads")
"""The attributes by which an attention module says how many heads it has."""
PER_HEAD_ATTRIBUTES = ("all_head_size", "inner_dim", "out_dim_keys_values", "out_dim_projection")
"""Its sizes that are a whole number of heads (Hugging Face's ``all_head_size``): scaled with them."""


def set_head_count(module: nn.Module, old: int, new: int) -> None:
    """Tell an attention module that was cut from ``old`` to ``new`` heads: its head count (the
    module's own attribute is what its forward reads, whatever a config says per stage) and its
    sizes that are a whole number of heads."""
    if old == new:
        return
    for attr, value in list(vars(module).items()):  # a cache of per-head tensors (LeViT's attention biases) is stale
        if "cache" in attr and isinstance(value, dict):
            setattr(module, attr, {})
    for attr in HEAD_ATTRIBUTES + PER_HEAD_ATTRIBUTES:  # plain attributes only (a property derives itself)
        value = vars(module).get(attr)
        if isinstance(value, int) and not isinstance(value, bool) and value % old == 0:
            setattr(module, attr, new if attr in HEAD_ATTRIBUTES else value // old * new)


def shrink(model: Backbone, keep: Mapping[str, np.ndarray], groups: Sequence[UnitGroup] | None = None) -> Backbone:
    """A physically smaller copy of ``model`` keeping, per group, the units ``keep[name]``
    (indices in ``model``'s *current* numbering). The model passed in is not modified."""
    groups = groups or model.unit_groups()
    small = copy.deepcopy(model)
    shrink_(small, keep, groups)
    if isinstance(small, Backbone):
        small.shrunk_from(groups, {g.name: len(keep[g.name]) for g in groups})
    return small


def shrink_(model: nn.Module, keep: Mapping[str, np.ndarray], groups: Sequence[UnitGroup]) -> list[str]:
    """Cut ``model`` itself to the units ``keep[name]`` of ``groups`` (as :func:`shrink`, in place,
    without telling a :class:`Backbone` its new sizes); the names of the modules it changed."""
    out_idx: dict[str, torch.Tensor] = {}
    in_idx: dict[str, torch.Tensor] = {}
    params: dict[str, tuple[int, torch.Tensor]] = {}
    for g in groups:
        units = np.asarray(keep[g.name])
        g.check(units)
        for slot in g.slots:
            index = slot.indices(units, g.size)
            if slot.role == PARAM:
                params[slot.module] = (slot.dim, index)
            else:
                (out_idx if slot.role == OUT else in_idx)[slot.module] = index
    changed = sorted(set(out_idx) | set(in_idx))
    for name in changed:
        cut_(model.get_submodule(name), out_idx.get(name), in_idx.get(name), name)
    for name, (dim, index) in params.items():
        owner, _, attr = name.rpartition(".")
        holder = model.get_submodule(owner)
        setattr(holder, attr, _param(getattr(holder, attr), index, dim))
        changed.append(owner)
    for g in groups:
        if g.kind == "head":
            set_head_count(model.get_submodule(g.name), g.size, len(keep[g.name]))
            changed.append(g.name)
    return changed


@torch.no_grad()
def zero_units(model: nn.Module, groups: Sequence[UnitGroup], kept: Mapping[str, np.ndarray]) -> None:
    """In place: the units not in ``kept[group]`` output exactly zero. Every parameter of their
    ``out`` and ``param`` slots is zeroed (conv and linear rows, biases, norm scale and shift, layer
    scales); a group with no unit left also loses the biases of the layers that read it, as its
    extracted block adds nothing."""
    for g in groups:
        dropped = np.setdiff1d(np.arange(g.size), kept[g.name])
        for slot in g.slots:
            if slot.role == IN:
                module = model.get_submodule(slot.module)
                if len(dropped) == g.size and getattr(module, "bias", None) is not None:
                    module.bias.zero_()
                continue
            for _, t, dim in slot.tensors(model):
                if isinstance(t, nn.Parameter):
                    t.index_fill_(dim, slot.indices(dropped, g.size).to(t.device), 0.0)
