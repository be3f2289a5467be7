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
  (:data:`~metavote.models.cutting.CUTTERS`) is an error naming it.
- **Nothing ends in a traceback or a hang.** A model that does not run on its own example input,
  or whose graph Torch-Pruning cannot build, is refused in one line (:class:`ConfigError`) naming
  it and why. A channel set whose dependency search fails or does not settle (a cycle of channel
  index mappings: a split of channels fed back into the same layers) is left whole, named after
  its root layer, as is a group whose cut-out raises (a reshape that hard-codes a channel count)
  or that is coupled through a GroupNorm of several groups. The whole trace has a time budget
  (:data:`TRACE_SECONDS`) and each dependency search a size budget; running over either is a
  one-line refusal naming the stage.

Why Torch-Pruning: it is the maintained dependency tracer of the field, knows residual adds,
concatenations, depthwise convolutions and unwrapped parameters, and needs only an example input;
``torch.fx`` would fail on the data-dependent control flow of Hugging Face models.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, MetavoteError, one_line
from .cutting import HEAD_ATTRIBUTES, find_cutter, shrink_, zero_units
from .units import IN, OUT, PARAM, Slot, UnitGroup

NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)

TRACE_SECONDS = 300.0
"""The time budget of one trace (forward-order pass, Torch-Pruning's graph and dependency searches,
the cut-out check), in seconds: past it the trace is refused in one line naming the stage."""
SEARCH_ITEMS = 8
"""The size budget of one dependency search: at most this many items per node of the graph (a
search that grows past it does not settle, and its channels are left whole)."""


class _OverBudget(Exception):
    pass


class _Deadline:
    """The time left to a trace; :meth:`check` raises :class:`_OverBudget` past it."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise _OverBudget()


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
    sides: dict[str, str] = field(default_factory=dict)
    """For a set that passes through a channel shuffle: each item's side of it (``pre`` or ``post``);
    ``{"": "several"}`` when it passes through more than one."""


def _head_count(model: nn.Module, name: str, heads: Mapping[str, int]) -> tuple[str, int] | None:
    """The attention module a linear layer belongs to (its parent, or its grandparent when the
    linear sits in a wrapper such as LeViT's linear-and-BatchNorm, that says how many heads it has,
    or is named in ``heads``) and its head count."""
    parent = name.rpartition(".")[0]
    for owner in (parent, parent.rpartition(".")[0]) if parent else (parent,):
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


def _dependency_groups(model: nn.Module, example: torch.Tensor, ignore: Iterable[nn.Module], deadline: _Deadline,
                       what: str) -> tuple[list[_Proto], dict[str, str]]:
    """Torch-Pruning's coupled channel sets, one per root layer not yet reached (as its
    ``get_all_groups``, with each search bounded), and the root layers whose search failed, with why."""
    import torch_pruning as tp
    from torch_pruning.dependency import graph as tp_graph

    names = {m: n for n, m in model.named_modules()}
    param_names = {id(p): n for n, p in model.named_parameters()}
    # every parameter that is not a known layer's gets its last non-singleton dimension pruned (as
    # Torch-Pruning guesses; said explicitly so that it does not warn)
    known = (nn.modules.conv._ConvNd, nn.Linear, *NORMS, nn.Embedding, nn.PReLU, nn.MultiheadAttention)
    unwrapped = [(p, max(d for d in range(p.dim()) if p.shape[d] > 1) if any(s > 1 for s in p.shape) else p.dim() - 1)
                 for m in model.modules() if not isinstance(m, known) for p in m.parameters(recurse=False)]
    dims = {id(p): d for p, d in unwrapped}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, unwrapped_parameters=unwrapped)
        except MetavoteError:
            raise
        except Exception as e:  # noqa: BLE001 (Torch-Pruning raises what it likes on a graph it does not know)
            raise ConfigError(f"cannot trace {what}: Torch-Pruning cannot build its dependency graph{_operation(e)} "
                              f"({type(e).__name__}: {one_line(e, 160)})") from e
        limit = SEARCH_ITEMS * max(len(graph.module2node), 16)

        class Bounded(tp_graph.Group):  # a dependency search that keeps growing never settles: stop it
            def add_dep(self, dep, idxs):
                if len(self._group) >= limit:
                    raise _OverBudget("size")
                if len(self._group) % 64 == 0:
                    deadline.check()
                super().add_dep(dep, idxs)

        protos, failed, visited = [], {}, set()
        ignored = list(ignore) + list(graph.IGNORED_LAYERS_IN_TRACING)
        original, tp_graph.Group = tp_graph.Group, Bounded
        try:
            for m in list(graph.module2node):
                deadline.check()
                if any(m is i for i in ignored) or not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or m in visited:
                    continue
                pruner = graph.get_pruner_of_module(m)
                if pruner is None or pruner.get_out_channels(m) is None:
                    continue
                try:
                    group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
                except _OverBudget as e:
                    if not e.args:
                        raise
                    failed[names.get(m, "?")] = "Torch-Pruning's dependency search does not settle on these channels (a cycle of channel index mappings, such as a split of channels fed back into the same layers)"
                    continue
                except MetavoteError:
                    raise
                except Exception as e:
                    failed[names.get(m, "?")] = f"Torch-Pruning cannot map these channels ({type(e).__name__}: {one_line(e, 120)})"
                    continue
                prunable = True
                for dep, _ in group:
                    if graph.is_out_channel_pruning_fn(dep.handler):
                        visited.add(dep.target.module)
                        prunable &= not any(dep.target.module is i for i in ignored)
                if not prunable:
                    continue
                items, sides = [], _shuffle_sides(group, names)
                for dep, idxs in group:
                    target = dep.target.module
                    role = IN if "in_channels" in dep.handler.__name__ else OUT
                    if isinstance(target, nn.Parameter) or (hasattr(target, "data") and id(target) in param_names):
                        items.append((param_names[id(target)], PARAM, [int(i) for i in idxs], dims[id(target)]))
                    elif isinstance(target, nn.Module) and target in names:
                        items.append((names[target], role, [int(i) for i in idxs], 0))
                protos.append(_Proto(len(group[0][1]), items, sides))
        finally:
            tp_graph.Group = original
    return protos, failed


def _shuffle_sides(group, names: Mapping[nn.Module, str]) -> dict[str, str]:
    """Which side of a channel shuffle each layer of a Torch-Pruning group is on (its graph passes
    channels through ``nn.ChannelShuffle`` unchanged): ``pre`` when the layer's node leads to the
    shuffle's, else ``post``; empty when the group meets no shuffle."""
    shuffles = [dep.target for dep, _ in group if "ChannelShuffle" in str(getattr(dep.target.module, "_grad_fn", ""))]
    shuffles = list({id(n): n for n in shuffles}.values())
    if not shuffles:
        return {}
    if len(shuffles) > 1:
        return {"": "several"}
    upstream, todo = set(), list(shuffles[0].inputs)
    while todo:
        node = todo.pop()
        if id(node) not in upstream:
            upstream.add(id(node))
            todo.extend(node.inputs)
    return {names[dep.target.module]: "pre" if id(dep.target) in upstream else "post" for dep, _ in group if dep.target.module in names}


OPERATIONS = {"concat": "a concatenation (torch.cat)", "split": "a split of channels", "reshape": "a reshape", "flatten": "a flatten",
              "unbind": "an unbind", "expand": "an expand", "slice": "a slice of channels"}


def _operation(error: BaseException) -> str:
    """ `` through <the operation>`` where Torch-Pruning failed, read off its traceback, or ``""``."""
    frames, tb = [], error.__traceback__
    while tb is not None:
        if "torch_pruning" in tb.tb_frame.f_code.co_filename:
            frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    for name in reversed(frames):
        for key, operation in OPERATIONS.items():
            if key in name:
                return f" through {operation}"
    return ""


def _plain_slot(name: str, role: str, idxs: list[int], size: int, dim: int) -> Slot | None:
    """The slot of a channel set mapped one to one (or as ``copies`` blocks), or None for another mapping."""
    if idxs == list(range(size)):
        return Slot(name, role, dim=dim)
    copies, rest = divmod(len(idxs), size)
    if not rest and copies > 1 and sorted(idxs) == list(range(len(idxs))):
        return Slot(name, role, copies=copies, dim=dim)
    return None


def trace_unit_groups(model: nn.Module, example: torch.Tensor, classifier: str | None = None,
                      heads: Mapping[str, int] | None = None, ignore: Iterable[str] = (), verify: bool = True,
                      budget: float | None = None) -> Trace:
    """The prunable unit groups of ``model`` (see the module's docstring), traced on ``example``.

    ``classifier``: the head's module name (its inputs are a group's consumer; it is never a group
    of its own). ``heads``: head counts of attention modules that do not say theirs. ``ignore``:
    modules whose groups are left whole. ``verify``: cut half of each group out and keep it only if
    the outputs equal those with its units zeroed in place (``model`` must be a
    :class:`~metavote.models.base.Backbone` for the cut). ``budget``: seconds (default
    :data:`TRACE_SECONDS`). Whatever cannot be traced is one :class:`ConfigError` line."""
    heads = dict(heads or {})
    deadline = _Deadline(TRACE_SECONDS if budget is None else budget)
    what = type(getattr(model, "net", model)).__name__
    stage = "its forward pass"
    was_training = model.training
    model.eval()
    try:
        try:
            order = _execution_order(model, example)
        except MetavoteError:
            raise
        except Exception as e:
            raise ConfigError(f"{what} does not run on its own input {tuple(example.shape[1:])}: {type(e).__name__}: {one_line(e, 200)}") from e
        stage = "Torch-Pruning's dependency graph"
        with torch.enable_grad():
            protos, skipped = _dependency_groups(model, example, [model.get_submodule(classifier)] if classifier else [], deadline, what)
        model.train(was_training)
        stage = "the cut-out check"
        return _groups(model, example, protos, skipped, order, heads, set(ignore), verify, deadline)
    except _OverBudget as e:
        raise ConfigError(f"tracing {what} ran over its {deadline.seconds:g} s budget in {stage} "
                          f"(metavote.models.trace.TRACE_SECONDS)") from e
    finally:
        model.train(was_training)


def _groups(model: nn.Module, example: torch.Tensor, protos: list[_Proto], skipped: dict[str, str], order: Mapping[str, int],
            heads: Mapping[str, int], ignore: set[str], verify: bool, deadline: _Deadline) -> Trace:
    """The unit groups of the coupled channel sets (the rules of the module docstring), checked."""
    module_order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    head_of = _attention_projections(model, protos, order, heads)
    grouped = _grouped_convolutions(model, protos)
    shuffles = {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.ChannelShuffle)}
    groups: list[UnitGroup] = []
    interleaved: dict[str, UnitGroup] = {}  # head groups whose q, k, v may be laid out head by head instead
    for members in _merged(protos, {} if shuffles else grouped):  # around a shuffle, grouped convolutions keep their groups
        items = [item for i in members for item in protos[i].items]
        label = min((n for n, r, _, _ in items if r == OUT), key=lambda n: order.get(n, len(order)), default=items[0][0])
        try:
            if any(r == IN and n in head_of for n, r, _, _ in items) or any(
                    r != PARAM and isinstance(model.get_submodule(n), nn.MultiheadAttention) for n, r, _, _ in items):
                raise _Skip("the token width of an attention model (heads and MLP nodes are pruned instead)")
            if any(n in ignore or any(n.startswith(i + ".") for i in ignore) for n, _, _, _ in items):
                raise _Skip("ignored")
            norms = [n for n, r, _, _ in items if r != PARAM and isinstance(m := model.get_submodule(n), nn.GroupNorm)
                     and m.num_groups not in (1, m.num_channels)]
            if norms:
                raise _Skip(f"{norms[0]} normalises these channels in groups of several (a GroupNorm of "
                            f"{model.get_submodule(norms[0]).num_groups} groups): one cannot go alone")
            owners = {head_of[n] for n, r, _, _ in items if r == OUT and n in head_of}
            convs = {grouped[n] for n, _, _, _ in items if n in grouped}
            if owners:
                group = _head_group(model, items, owners, heads)
                alternative = _head_group(model, items, owners, heads, interleaved=True)
                if alternative != group:
                    interleaved[group.name] = alternative
            elif shuffles and (convs or protos[members[0]].sides):
                group = _shuffled_group(model, protos[members[0]], convs, shuffles, order)
            elif convs:
                group = _grouped_group(model, items, convs)
            else:
                group = _channel_group(items, protos[members[0]].size)
            if group.size < 2:
                raise _Skip(f"one {'head' if group.kind == 'head' else 'unit'} only: nothing to choose from")
        except _Skip as why:
            skipped[label] = str(why)
            continue
        for slot in group.slots:
            if slot.role != PARAM and find_cutter(m := model.get_submodule(slot.module)) is None:
                raise ConfigError(f"cannot prune through {slot.module} ({type(m).__name__}): no cutter for this layer type; "
                                  "register one with metavote.register_cutter or leave it out with ignore=")
        groups.append(_finish(model, group, order))
    for name, module in model.named_modules():  # PyTorch's own attention: its heads, read off the module
        if isinstance(module, nn.MultiheadAttention) and not any(name == i or name.startswith(i + ".") for i in ignore):
            try:
                groups.append(_finish(model, _multihead_group(name, module), order))
            except _Skip as why:
                skipped[name] = str(why)
    groups.sort(key=lambda g: min(module_order[p] for p in g.producers))
    if verify and groups:  # all groups at once (one cut), then one by one only when that fails
        probe, example = _perturbed(model).eval(), example.double()
        if _removal_fails(probe, groups, example) is not None:
            for i, g in enumerate(list(groups)):  # each alone, so that one that fails does not take the others with it
                deadline.check()
                if (why := _removal_fails(probe, [g], example)) is None:
                    continue
                other = interleaved.get(g.name)
                if other is not None and _removal_fails(probe, [other := _finish(model, other, order)], example) is None:
                    groups[groups.index(g)] = other
                else:
                    groups.remove(g)
                    skipped[g.name] = why
    return Trace(groups, skipped)


def _attention_projections(model: nn.Module, protos: list[_Proto], order: Mapping[str, int],
                           heads: Mapping[str, int]) -> dict[str, tuple[str, int]]:
    """q, k and v (or a fused qkv), each with its attention module and head count: the linears of
    an attention module whose outputs share a group with a later linear reading them inside the
    same module or beside it (the output projection: ``attention.output.dense`` beside
    ``attention.self``, as BERT-style blocks put it). Their inputs are the token width."""
    head_of: dict[str, tuple[str, int]] = {}
    for proto in protos:
        owned: dict[tuple[str, int], list[str]] = {}
        for name, role, _, _ in proto.items:
            if role == OUT and isinstance(model.get_submodule(name), nn.Linear) and (found := _head_count(model, name, heads)):
                owned.setdefault(found, []).append(name)
        for (owner, count), outs in owned.items():
            scopes = tuple(f"{scope}." for scope in (owner, owner.rpartition(".")[0]) if scope)
            readers = [n for n, r, _, _ in proto.items if r == IN and n.startswith(scopes) and isinstance(model.get_submodule(n), nn.Linear)]
            if readers and min(order.get(n, 0) for n in outs) < min(order.get(n, 0) for n in readers):
                head_of.update(dict.fromkeys(outs, (owner, count)))
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


@contextlib.contextmanager
def _restored(model: nn.Module, groups: list[UnitGroup]):
    """Give back, on leaving, every module the groups' slots touch as it was (its attributes and
    tensors): the cut-out check cuts and zeroes the model itself instead of deep copies of it."""
    names = {s.module.rpartition(".")[0] if s.role == PARAM else s.module for g in groups for s in g.slots}
    names |= {g.name for g in groups if g.kind == "head"}
    saved = {}
    for name in names:
        m = model.get_submodule(name)
        saved[name] = (m.__class__, dict(m.__dict__), dict(m._parameters), dict(m._buffers),
                       {k: t.detach().clone() for k, t in [*m._parameters.items(), *m._buffers.items()] if t is not None})
    try:
        yield
    finally:
        with torch.no_grad():
            for name, (cls, attributes, params, buffers, values) in saved.items():
                m = model.get_submodule(name)
                m.__class__ = cls  # a cutter may have given it a class for its new sizes (PrunedMultiheadAttention)
                m.__dict__.clear()
                m.__dict__.update(attributes)
                m._parameters, m._buffers = params, buffers
                for k, t in [*params.items(), *buffers.items()]:
                    if t is not None:
                        t.copy_(values[k])


@torch.no_grad()
def _removal_fails(model: nn.Module, tested: list[UnitGroup], example: torch.Tensor) -> str | None:
    """Why cutting every other unit of the ``tested`` groups out does not give the outputs of
    zeroing them in place (what voting, averaging and the dense view assume of a unit), or None
    when it does. A cut that raises (a reshape that hard-codes a channel count) is a reason too.
    ``model`` (the float64 probe, in eval mode) is cut and zeroed, and given back as it was."""
    keep = {g.name: np.arange(0, g.size, 2) for g in tested}
    with _restored(model, tested):
        try:
            zero_units(model, tested, keep)
            want = model(example)
        except Exception as e:  # noqa: BLE001 (a unit that cannot be zeroed cannot be pruned either)
            return f"its units cannot be zeroed in place ({type(e).__name__}: {one_line(e, 120)})"
    with _restored(model, tested):
        try:
            shrink_(model, keep, tested)
        except Exception as e:  # noqa: BLE001 (a cutter that fails on these indices)
            return f"its units cannot be cut out ({type(e).__name__}: {one_line(e, 160)})"
        try:
            got = model(example)
        except Exception as e:  # noqa: BLE001 (any failure of the cut model is a reason to leave the group whole)
            return f"the model does not run with these units cut out ({type(e).__name__}: {one_line(e, 120)}): a layer reshapes them to a fixed count"
    if got.shape == want.shape and torch.allclose(got, want, rtol=1e-6, atol=1e-9 * float(want.abs().max()) + 1e-12):
        return None
    return "removing units changes the others' outputs (a normalisation across these channels, such as a LayerNorm)"


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


def _head_group(model: nn.Module, items, owners: set[tuple[str, int]], declared: Mapping[str, int],
                interleaved: bool = False) -> UnitGroup:
    """A group of heads: ``head_dim`` channels of each q, k, v and of the output projection's inputs,
    one of a per-head table or scale (a relative-position table, LeViT's attention biases, Swin V2's
    logit scale and the position-bias MLP's outputs). A fused layer of several ``head_dim`` per head
    is q, k and v one after the other (``copies``), or, ``interleaved``, head after head (LeViT's
    q, k, v of each head together: one block per head). A head count that does not fit is an error
    when the user declared it (``heads=``), else the group is left whole."""
    if len(owners) > 1:
        raise _Skip(f"the outputs of several attention modules are coupled ({', '.join(sorted(o for o, _ in owners))})")
    (owner, count), = owners
    fail = ConfigError if owner in declared else _Skip
    listed = {name for name, _, _, _ in items}
    extra = [(f"{owner}.{k}", PARAM, [], list(p.shape).index(count)) for k, p in model.get_submodule(owner).named_parameters(recurse=False)
             if f"{owner}.{k}" not in listed and count in p.shape]  # a per-head table indexed by a buffer, which the graph does not follow
    widths, items = {}, [_per_head_dim(model, owner, count, item) for item in items] + extra
    for name, role, idxs, dim in items:
        n = _channels(model, name, role, idxs, dim)
        if n % count:
            raise fail(f"{owner} has {count} heads, which do not divide the {n} channels of {name}")
        widths[name, role] = n // count
    head_dim = min(w for w in widths.values() if w > 1) if any(w > 1 for w in widths.values()) else 1
    slots = []
    for name, role, _, dim in items:
        w = widths[name, role]
        if w == 1:
            slots.append(Slot(name, role, dim=dim))
        elif interleaved:
            slots.append(Slot(name, role, width=w, dim=dim))
        elif w % head_dim:
            raise fail(f"{name}: {w * count} channels are not a whole number of {count} heads of {head_dim}")
        else:
            slots.append(Slot(name, role, width=head_dim, copies=w // head_dim, dim=dim))
    return UnitGroup(owner, count, tuple(slots), kind="head")


def _multihead_group(name: str, m: nn.MultiheadAttention) -> UnitGroup:
    """The heads of an ``nn.MultiheadAttention`` (``nn.TransformerEncoderLayer``'s, torchvision's ViT's):
    a head is ``head_dim`` rows of each of q, k and v in the packed ``in_proj_weight`` and bias (one
    ``out`` slot on the module, ``copies=3``) and ``head_dim`` input columns of ``out_proj``. Its
    torch graph is one opaque op, so the group is read off the module rather than traced; the
    cut-out check then holds it to the same standard as every traced group."""
    if not m._qkv_same_embed_dim:
        raise _Skip("separate q, k and v weights (kdim or vdim set): left whole")
    if m.bias_k is not None or m.add_zero_attn:
        raise _Skip("learned or zero key/value biases (add_bias_kv, add_zero_attn) are shared by every head: left whole")
    if m.num_heads < 2:
        raise _Skip("one head only: nothing to choose from")
    slots = (Slot(name, OUT, width=m.head_dim, copies=3), Slot(f"{name}.out_proj", IN, width=m.head_dim))
    return UnitGroup(name, m.num_heads, slots, kind="head")


def _per_head_dim(model: nn.Module, owner: str, count: int, item):
    """A bare parameter of the attention module with one entry per head (LeViT's attention biases,
    heads x points) is cut along its head dimension, whatever dimension Torch-Pruning guessed."""
    name, role, idxs, dim = item
    if role == PARAM and name.startswith(f"{owner}."):
        shape = model.get_parameter(name).shape
        if shape[dim] != count and count in shape:
            return name, role, idxs, list(shape).index(count)
    return item


def _channels(model: nn.Module, name: str, role: str, idxs: list[int], dim: int) -> int:
    """How many channels a slot's tensor has along its unit dimension (the layer's own size: a
    dependency search through a reshape may report another count)."""
    if role == PARAM:
        return model.get_parameter(name).shape[dim]
    weight = getattr(model.get_submodule(name), "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() >= (2 if role == IN else 1):
        return weight.shape[1 if role == IN else 0]
    return len(idxs)


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


def _shuffled_group(model: nn.Module, proto: _Proto, convs: set[int], shuffles: Mapping[str, int], order: Mapping[str, int]) -> UnitGroup:
    """Channels of a model with a channel shuffle (``nn.ChannelShuffle(g)`` between grouped
    convolutions of ``g`` groups, as in ShuffleNet): a unit keeps *the same channels inside every
    group*, so every grouped convolution keeps its ``g`` groups and the shuffle's permutation still
    holds. A set that does not pass through the shuffle (the residual stream) has ``size / g``
    units of ``g`` channels, one in each group (``copies=g``). A set that does (the first grouped
    convolution's outputs, the shuffle, the depthwise convolution, the second one's inputs) must
    keep the same positions inside the groups on both sides, so a unit is ``g * g`` channels:
    before the shuffle the same position in each of ``g`` blocks of every group (``copies=g*g``),
    after it ``g`` adjacent channels in each of the ``g`` groups (``width=g, copies=g``); it
    needs ``g * g`` to divide the width, and is left whole otherwise."""
    items, size = proto.items, proto.size
    if proto.sides.get("") == "several":
        raise _Skip("these channels pass through more than one channel shuffle")
    for name, role, idxs, _ in items:
        if idxs != list(range(size)):
            raise _Skip(f"{name} reads these channels through a mapping other than one to one (a concatenation or a reshape)")
    if proto.sides:
        pre = [order.get(n, -1) for n, _, _, _ in items if proto.sides.get(n) == "pre"]
        post = [order.get(n, len(order)) for n, _, _, _ in items if proto.sides.get(n) == "post"]
        between = {shuffles[s] for s in shuffles if max(pre, default=-1) < order.get(s, -1) < min(post, default=len(order))}
        if len(between) != 1:
            raise _Skip("the channel shuffle these channels pass through could not be placed")
        g = between.pop()
        if convs - {g}:
            raise _Skip(f"grouped convolutions of {sorted(convs)} groups meet a shuffle of {g}")
        if size % (g * g):
            raise _Skip(f"{size} channels through a shuffle of {g} groups: the same channels inside every group on both sides "
                        f"need a multiple of {g * g}")
        slots = [Slot(name, role, copies=g * g, dim=dim) if proto.sides.get(name) == "pre" else Slot(name, role, width=g, copies=g, dim=dim)
                 for name, role, _, dim in items]
        return UnitGroup(items[0][0], size // (g * g), tuple(_inside_groups(model, s) for s in slots))
    if len(convs) > 1:
        raise _Skip(f"grouped convolutions of different group counts ({sorted(convs)}) share these channels")
    g = next(iter(convs))
    if size % g:
        raise _Skip(f"{size} channels do not split into {g} convolution groups")
    return UnitGroup(items[0][0], size // g, tuple(_inside_groups(model, Slot(name, role, copies=g, dim=dim)) for name, role, _, dim in items))


def _inside_groups(model: nn.Module, slot: Slot) -> Slot:
    """A grouped convolution's inputs are the weight's dim 1, one group's worth: the slot of the
    same units inside each of its ``g`` groups (``copies`` divided by ``g``)."""
    m = model.get_submodule(slot.module) if slot.role == IN else None
    if not (isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1):
        return slot
    if slot.copies % m.groups:
        raise _Skip(f"{slot.module}'s inputs do not keep the same channels in each of its {m.groups} groups")
    return Slot(slot.module, IN, width=slot.width, copies=slot.copies // m.groups)


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

