"""Unit groups traced from the computation graph of any ``nn.Module`` classifier.

Torch-Pruning's :class:`DependencyGraph` runs the model once on an example input and answers, for
each convolution or linear layer, every place its output channels reach: the norms after it, the
layers that read it, the residual adds that tie several layers' channels together, the channel
products of squeeze-and-excitation, bare parameters such as a layer scale. :func:`trace_unit_groups`
turns each such coupled set into a :class:`~metavote.models.units.UnitGroup`, with these rules:

- **Attention heads.** A group holding the outputs of linear layers inside a module that says how
  many heads it has (``num_heads``, ``num_attention_heads``; or ``heads={module: count}``) is a group of
  heads: a head is ``head_dim`` rows of each of q, k and v (``copies=3`` when they are one fused
  ``qkv`` layer), ``head_dim`` input columns of the output projection, one column of a
  relative-position table. A head count that does not divide a width is an error.
- **The token width of an attention model is not pruned** (as the paper's AHNP: heads and MLP
  nodes are): a group that feeds the inputs of q, k or v is left whole, with the class token and
  position embeddings it carries.
- **Grouped convolutions** are cut by whole groups: the groups before and after one are one group
  whose unit is a convolution group (``width`` channels in each slot). A depthwise convolution's
  inputs are its outputs, so it is a plain ``out`` slot.
- Slots are listed producers first, in the order the forward pass runs them; ``probes`` (where
  activation and Taylor importance measure) are the producing norms, else the producing layers;
  groups are in depth order (their first producer's place in ``named_modules``). A group is named
  after its attention module or its first producer. ``can_be_empty`` when every producer's parent
  module says it runs with no unit left (``empty_ok = True``, as metavote's own ViT blocks do).
- A group whose channels reach a layer through a mapping other than these (a concatenation, a
  reshape into space), or whose units cannot be cut out without changing the others' outputs
  (checked on the example input: a LayerNorm or a global response normalisation across the
  channels, as in ConvNeXt's residual stream), is left whole and reported in ``skipped``. Zeroing a
  unit in place and cutting it out must agree, as voting, averaging and the dense view assume it.
  A layer type that has no cutter
  (:data:`~metavote.pruning.surgery.CUTTERS`) is an error naming it.

Why Torch-Pruning: it is the maintained dependency tracer of the field, knows residual adds,
concatenations, depthwise convolutions and unwrapped parameters, and needs only an example input;
``torch.fx`` would fail on the data-dependent control flow of Hugging Face models.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .units import IN, OUT, PARAM, Slot, UnitGroup

HEAD_ATTRIBUTES = ("num_heads", "num_attention_heads")
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass
class Trace:
    """What :func:`trace_unit_groups` found: the groups, and the coupled channel sets left whole with why."""

    groups: list[UnitGroup]
    skipped: dict[str, str] = field(default_factory=dict)


@dataclass
class _Proto:
    """A coupled channel set as Torch-Pruning gives it: (name, role, tensor indices per root channel,
    unit dimension of a bare parameter)."""

    size: int
    items: list[tuple[str, str, list[int], int]]


def _head_count(model: nn.Module, name: str, heads: Mapping[str, int]) -> tuple[str, int] | None:
    """The attention module a linear layer belongs to (its parent, when that says how many heads it
    has, or names it in ``heads``) and its head count."""
    owner = name.rpartition(".")[0]
    if owner in heads:
        return owner, int(heads[owner])
    module = model.get_submodule(owner)
    for attr in HEAD_ATTRIBUTES:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return owner, value
    return None


def _execution_order(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Each module's position in the order a forward pass first calls it."""
    order: dict[str, int] = {}

    def seen(name: str):
        def hook(_module, _args) -> None:
            order.setdefault(name, len(order))
        return hook

    handles = [m.register_forward_pre_hook(seen(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return order


def _dependency_groups(model: nn.Module, example: torch.Tensor, ignore: Iterable[nn.Module]) -> list[_Proto]:
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    param_names = {id(p): n for n, p in model.named_parameters()}
    # every parameter that is not a known layer's gets its last non-singleton dimension pruned (as
    # Torch-Pruning guesses; said explicitly so that it does not warn)
    known = (nn.modules.conv._ConvNd, nn.Linear, *NORMS, nn.Embedding, nn.PReLU)
    unwrapped = [(p, max(d for d in range(p.dim()) if p.shape[d] > 1) if any(s > 1 for s in p.shape) else p.dim() - 1)
                 for m in model.modules() if not isinstance(m, known) for p in m.parameters(recurse=False)]
    dims = {id(p): d for p, d in unwrapped}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, unwrapped_parameters=unwrapped)
        protos = []
        for group in graph.get_all_groups(ignored_layers=list(ignore), root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
            items = []
            for dep, idxs in group:
                target = dep.target.module
                role = IN if "in_channels" in dep.handler.__name__ else OUT
                if isinstance(target, nn.Parameter) or (hasattr(target, "data") and id(target) in param_names):
                    items.append((param_names[id(target)], PARAM, [int(i) for i in idxs], dims[id(target)]))
                elif isinstance(target, nn.Module) and target in names:
                    items.append((names[target], role, [int(i) for i in idxs], 0))
            protos.append(_Proto(len(group[0][1]), items))
    return protos


def _plain_slot(name: str, role: str, idxs: list[int], size: int, dim: int) -> Slot | None:
    """The slot of a channel set mapped one to one (or as ``copies`` blocks), or None for another mapping."""
    if idxs == list(range(size)):
        return Slot(name, role, dim=dim)
    copies, rest = divmod(len(idxs), size)
    if not rest and copies > 1 and sorted(idxs) == list(range(len(idxs))):
        return Slot(name, role, copies=copies, dim=dim)
    return None


def trace_unit_groups(model: nn.Module, example: torch.Tensor, classifier: str | None = None,
                      heads: Mapping[str, int] | None = None, ignore: Iterable[str] = (), verify: bool = True) -> Trace:
    """The prunable unit groups of ``model`` (see the module's docstring), traced on ``example``.

    ``classifier``: the head's module name (its inputs are a group's consumer; it is never a group
    of its own). ``heads``: head counts of attention modules that do not say theirs. ``ignore``:
    modules whose groups are left whole. ``verify``: cut half of each group out and keep it only if
    the outputs equal those with its units zeroed in place (``model`` must be a
    :class:`~metavote.models.base.Backbone` for the cut)."""
    from ..pruning.surgery import find_cutter

    heads = dict(heads or {})
    was_training = model.training
    model.eval()
    try:
        order = _execution_order(model, example)
        with torch.enable_grad():
            protos = _dependency_groups(model, example, [model.get_submodule(classifier)] if classifier else [])
    finally:
        model.train(was_training)
    module_order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    ignore = set(ignore)
    skipped: dict[str, str] = {}

    head_of = _attention_projections(model, protos, order, heads)
    grouped = _grouped_convolutions(model, protos)
    groups: list[UnitGroup] = []
    for members in _merged(protos, grouped):
        items = [item for i in members for item in protos[i].items]
        label = min((n for n, r, _, _ in items if r == OUT), key=lambda n: order.get(n, len(order)), default=items[0][0])
        try:
            if any(r == IN and n in head_of for n, r, _, _ in items):
                raise _Skip("the token width of an attention model (heads and MLP nodes are pruned instead)")
            if any(n in ignore or any(n.startswith(i + ".") for i in ignore) for n, _, _, _ in items):
                raise _Skip("ignored")
            owners = {head_of[n] for n, r, _, _ in items if r == OUT and n in head_of}
            convs = {grouped[n] for n, _, _, _ in items if n in grouped}
            if owners:
                group = _head_group(model, items, owners)
            elif convs:
                group = _grouped_group(model, items, convs)
            else:
                group = _channel_group(items, protos[members[0]].size)
        except _Skip as why:
            skipped[label] = str(why)
            continue
        for slot in group.slots:
            if slot.role != PARAM and find_cutter(m := model.get_submodule(slot.module)) is None:
                raise ConfigError(f"cannot prune through {slot.module} ({type(m).__name__}): no cutter for this layer type; "
                                  "register one with metavote.register_cutter or leave it out with ignore=")
        groups.append(_finish(model, group, order))
    groups.sort(key=lambda g: min(module_order[p] for p in g.producers))
    if verify:  # all groups at once (one cut), then one by one only when that fails
        probe, example = _perturbed(model), example.double()
        if not _removal_is_exact(probe, groups, groups, example):
            for g in [g for g in groups if not _removal_is_exact(probe, groups, [g], example)]:
                groups.remove(g)
                skipped[g.name] = "removing units changes the others' outputs (a normalisation across these channels, such as a LayerNorm)"
    return Trace(groups, skipped)


def _attention_projections(model: nn.Module, protos: list[_Proto], order: Mapping[str, int],
                           heads: Mapping[str, int]) -> dict[str, tuple[str, int]]:
    """q, k and v (or a fused qkv), each with its attention module and head count: the linears of
    an attention module whose outputs share a group with a later linear of the same module reading
    them (the output projection). Their inputs are the token width."""
    head_of: dict[str, tuple[str, int]] = {}
    for proto in protos:
        owned: dict[tuple[str, int], dict[str, list[str]]] = {}
        for name, role, _, _ in proto.items:
            if role != PARAM and isinstance(model.get_submodule(name), nn.Linear) and (found := _head_count(model, name, heads)):
                owned.setdefault(found, {OUT: [], IN: []})[role].append(name)
        for found, roles in owned.items():
            if roles[OUT] and roles[IN] and min(order.get(n, 0) for n in roles[OUT]) < min(order.get(n, 0) for n in roles[IN]):
                head_of.update(dict.fromkeys(roles[OUT], found))
    return head_of


def _grouped_convolutions(model: nn.Module, protos: list[_Proto]) -> dict[str, int]:
    """Convolutions with groups (depthwise ones aside, whose inputs are their outputs) and their group counts."""
    out = {}
    for proto in protos:
        for name, role, _, _ in proto.items:
            m = model.get_submodule(name) if role != PARAM else None
            if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels):
                out[name] = m.groups
    return out


def _merged(protos: list[_Proto], grouped: Mapping[str, int]) -> list[list[int]]:
    """The channel sets as unit groups: a grouped convolution ties the set it reads to the set it writes."""
    parent = list(range(len(protos)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    where = {(name, role): i for i, proto in enumerate(protos) for name, role, _, _ in proto.items}
    for name in grouped:
        if (name, IN) in where and (name, OUT) in where:
            parent[root(where[(name, IN)])] = root(where[(name, OUT)])
    members: dict[int, list[int]] = {}
    for i in range(len(protos)):
        members.setdefault(root(i), []).append(i)
    return list(members.values())


@torch.no_grad()
def _perturbed(model: nn.Module) -> nn.Module:
    """A float64 copy with every parameter moved by seeded noise, so that a layer that starts as the
    identity (a zero-initialised layer scale or response normalisation) shows what it does."""
    copy_ = copy.deepcopy(model).double()  # float64: summation order cannot pass for a real difference
    generator = torch.Generator().manual_seed(0)
    for p in copy_.parameters():
        p.add_(torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device) * (0.5 * float(p.std()) if p.numel() > 1 else 0.5) + 0.1)
    return copy_


@torch.no_grad()
def _removal_is_exact(model: nn.Module, groups: list[UnitGroup], tested: list[UnitGroup], example: torch.Tensor) -> bool:
    """Whether cutting every other unit of the ``tested`` groups out gives the same outputs as
    zeroing them in place (what voting, averaging and the dense view assume of a unit)."""
    from ..pruning.surgery import shrink, zero_units

    keep = {g.name: np.arange(g.size) for g in groups} | {g.name: np.arange(0, g.size, 2) for g in tested}
    was_training = model.training
    model.eval()
    try:
        masked = copy.deepcopy(model)
        zero_units(masked, tested, keep)
        want = masked(example)
        got = shrink(model, keep, groups).eval()(example)
    finally:
        model.train(was_training)
    return bool(torch.allclose(got, want, rtol=1e-6, atol=1e-9 * float(want.abs().max()) + 1e-12))


class _Skip(Exception):
    pass


def _channel_group(items, size: int) -> UnitGroup:
    slots = []
    for name, role, idxs, dim in items:
        slot = _plain_slot(name, role, idxs, size, dim)
        if slot is None:
            raise _Skip(f"{name} reads these channels through a mapping other than one to one (a concatenation or a reshape)")
        slots.append(slot)
    return UnitGroup(items[0][0], size, tuple(slots))


def _head_group(model: nn.Module, items, owners: set[tuple[str, int]]) -> UnitGroup:
    if len(owners) > 1:
        raise _Skip(f"the outputs of several attention modules are coupled ({', '.join(sorted(o for o, _ in owners))})")
    (owner, count), = owners
    widths = {}
    for name, role, idxs, dim in items:
        n = model.get_parameter(name).shape[dim] if role == PARAM else len(idxs)
        if n % count:
            raise ConfigError(f"{owner} has {count} heads, which do not divide the {n} channels of {name}")
        widths[name, role] = n // count
    head_dim = min(w for w in widths.values() if w > 1) if any(w > 1 for w in widths.values()) else 1
    slots = []
    for name, role, _, dim in items:
        w = widths[name, role]
        if w == 1 and role == PARAM:
            slots.append(Slot(name, PARAM, dim=dim))
        elif w % head_dim:
            raise ConfigError(f"{name}: {w * count} channels are not a whole number of {count} heads of {head_dim}")
        else:
            slots.append(Slot(name, role, width=head_dim, copies=w // head_dim, dim=dim))
    return UnitGroup(owner, count, tuple(slots), kind="head")


def _grouped_group(model: nn.Module, items, convs: set[int]) -> UnitGroup:
    if len(convs) > 1:
        raise _Skip(f"grouped convolutions of different group counts ({sorted(convs)}) share these channels")
    count = convs.pop()
    slots = []
    for name, role, idxs, dim in items:
        m = model.get_submodule(name) if role != PARAM else None
        if role == IN and isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1:
            continue  # a grouped convolution's inputs go with its groups of outputs
        n = len(idxs)
        if n % count or idxs != list(range(n)):
            raise _Skip(f"{name}'s {n} channels do not split into {count} convolution groups")
        slots.append(Slot(name, role, width=n // count, dim=dim))
    return UnitGroup(items[0][0], count, tuple(slots))


def _finish(model: nn.Module, group: UnitGroup, order: Mapping[str, int]) -> UnitGroup:
    """Slots deduplicated and in forward order (producers, readers, bare parameters), probes,
    kind, name and whether the group may be emptied."""
    seen, slots = set(), []
    rank = {OUT: 0, IN: 1, PARAM: 2}
    for slot in sorted(group.slots, key=lambda s: (rank[s.role], order.get(s.module, len(order)), s.module)):
        if (slot.module, slot.role) not in seen:
            seen.add((slot.module, slot.role))
            slots.append(slot)
    producers = [s.module for s in slots if s.role == OUT]
    layers = {n: model.get_submodule(n) for n in producers}
    if group.kind == "head":
        probes, kind, name = (), "head", group.name
    else:
        probes = tuple(n for n in producers if isinstance(layers[n], NORMS)) or tuple(producers)
        kind = "node" if all(isinstance(m, nn.Linear) for m in layers.values()) else "channel"
        name = producers[0]
    owners = {n.rpartition(".")[0] for n in producers}
    empty_ok = all(getattr(model.get_submodule(o) if o else model, "empty_ok", False) for o in owners)
    return UnitGroup(name, group.size, tuple(slots), probes=probes, can_be_empty=empty_ok, kind=kind)

