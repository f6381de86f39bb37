"""Placing work and weights on a cluster: restricted submission, weight keys, ``to_cluster``.

Dask's array optimisation drops ``dask.annotate(workers=...)`` and fuses across the annotated
layers (docs/notes/dask-scheduler-plugins.md; checked again here: a two-stage blockwise chain
with different ``workers`` annotations came out as one fused layer with no annotations). So a
plan that pins units to workers is submitted directly: one ``client.submit`` per unit and chunk
with ``workers=`` and ``allow_other_workers=False``, keys ``(tf-<unit>-<token>, chunk)``. The
scheduler then overlaps stage s on chunk j with stage s+1 on chunk j-1 by itself. The caller
gets Dask arrays whose chunks are those futures, so it can go on lazily from there.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from taskflow.dask.layout import join_rows
from taskflow.dask.trace import BATCH, GraphTrace, sanitize
from taskflow.dask.units import INLINE_CONST_BYTES, UnitPlan, rows, run_unit, select

if TYPE_CHECKING:
    from taskflow.model import Model


def submit_plans(client: Any, trace: GraphTrace, plans: list[UnitPlan], where: dict[str, Any],
                 wanted: Sequence[str], feed: dict[str, da.Array], weights: dict[str, Any],
                 consts: dict[str, np.ndarray], batch_chunks: tuple[int, ...]) -> dict[str, Any]:
    """Submit every unit per chunk; return the wanted outputs as future-backed Dask arrays."""
    n = len(batch_chunks)
    starts = np.concatenate([[0], np.cumsum(batch_chunks)]).astype(int)
    inputs: dict[str, Any] = {}
    for name, a in feed.items():
        if name in trace.batch_inputs:
            inputs[name] = client.compute(list(a.to_delayed().ravel()))
        else:
            inputs[name] = client.compute(a)
    results: dict[int, Any] = {}
    resplit: dict[tuple, list] = {}

    def arg(src: tuple, j: int | None, whole: bool) -> Any:
        kind = src[0]
        if kind == "weight":
            return weights[src[1]]
        if kind == "input":
            if src[1] not in trace.batch_inputs:
                return inputs[src[1]]
            return inputs[src[1]] if j is None else inputs[src[1]][j]
        p = src[1]
        if kind == "resplit":
            if (p, src[2]) not in resplit:
                tok = tokenize(results[p].key, src[2])
                resplit[(p, src[2])] = [
                    client.submit(rows, results[p], src[2], int(starts[c]),
                                  int(starts[c + 1]), src[3], key=(f"tf-rows-{tok}", c))
                    for c in range(n)]
            return resplit[(p, src[2])] if j is None else resplit[(p, src[2])][j]
        if plans[p].unit.whole:
            return results[p]
        return results[p] if j is None else results[p][j]

    direct: dict[str, tuple[str, tuple[int, ...]]] = {}
    for k, up in enumerate(plans):
        u = up.unit
        restrict = {"workers": list(u.workers), "allow_other_workers": False} \
            if u.workers else {}
        tok = tokenize(up.program, [_keys(arg(s, None, True)) for s in up.sources])
        name = f"tf-{u.label}-{tok}"
        if u.whole:
            args = [arg(s, None, True) for s in up.sources]
            results[k] = client.submit(run_unit, up.program, *args, key=(name, 0), **restrict)
            continue
        # a unit whose one export is a wanted output gets the output array's own keys
        v = up.exports[0] if len(up.exports) == 1 else None
        rank, axis = 1, 0
        if v in wanted and len(where[v][0]) == 1 and trace.value_class[v] == BATCH \
                and trace.layout(v)[2] == 1:
            rank, axis = len(trace.full_shape(v, 0)), trace.layout(v)[0]
            direct[v] = name
        results[k] = [client.submit(run_unit, up.program, *[arg(s, j, False)
                                                             for s in up.sources],
                                    key=(name, *_block_index(j, axis, rank)), **restrict)
                      for j in range(n)]
    out = {}
    for v in wanted:
        if v in feed:
            out[v] = feed[v]
        elif v in consts:
            out[v] = da.from_array(consts[v], chunks=consts[v].shape)
        elif v in direct:
            name = direct[v]
            futures = results[where[v][0][0][0]]
            layer = {f.key: f for f in futures}
            out[v] = da.Array(HighLevelGraph.from_collections(name, layer, dependencies=()),
                              name, chunks=_chunks(trace, v, batch_chunks),
                              meta=np.empty((0,) * len(trace.shapes[v][0]), trace.dtypes[v]))
        else:
            out[v] = _assemble(client, trace, v, where[v], plans, results, starts)
    return out


def _block_index(j: int, axis: int, rank: int) -> tuple[int, ...]:
    """The block index of chunk ``j`` of a value whose batch lies on ``axis``."""
    return tuple(j if i == axis else 0 for i in range(rank))


def _chunks(trace: GraphTrace, v: str, batch_chunks: tuple[int, ...]) -> tuple:
    """Dask chunks of output ``v``: its batch axis split like the input's batch."""
    shape = trace.full_shape(v, int(sum(batch_chunks)))
    lay = trace.layout(v)
    if lay and lay[2] != 1:  # the batch is not outermost on its axis: one chunk
        lay = None
    return tuple(tuple(c * lay[1] for c in batch_chunks) if lay and i == lay[0] else (d,)
                 for i, d in enumerate(shape))


def _keys(x: Any) -> Any:
    if isinstance(x, list):
        return [_keys(y) for y in x]
    return getattr(x, "key", x)


def _assemble(client: Any, trace: GraphTrace, v: str, where: tuple[list, int | None],
              plans: list[UnitPlan], results: dict[int, Any], starts: np.ndarray) -> da.Array:
    """A Dask array over futures holding output ``v`` (one small gather task per chunk)."""
    parts, axis = where
    shape = trace.full_shape(v, int(starts[-1]))
    lay = trace.layout(v)
    n = len(starts) - 1 if lay and lay[2] == 1 else 1
    name = f"tf-out-{sanitize(v)}-{tokenize(v, [_keys(results[p]) for p, _ in parts])}"
    layer = {}
    whole = any(plans[p].unit.whole for p, _ in parts)
    if lay and lay[2] != 1 and not whole:
        # the batch is not outermost on its axis: one task joins every chunk
        key = (name, *(0,) * len(shape))
        layer[key] = client.submit(_gather_rows, *[list(results[p]) for p, _ in parts],
                                   sels=tuple(s for _, s in parts), axis=axis, layout=lay,
                                   key=key)
        n = 0
    for j in range(n):
        blocks, sels = [], []
        for p, sel in parts:
            r = results[p]
            blocks.append(r if plans[p].unit.whole else r[j])
            sels.append(sel)
        cut = (int(starts[j]), int(starts[j + 1]), lay) if lay and whole else None
        key = (name, *_block_index(j, lay[0] if lay else 0, len(shape)))
        layer[key] = client.submit(_gather, *blocks, sels=tuple(sels), axis=axis, cut=cut,
                                   key=key)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    chunks = _chunks(trace, v, tuple(np.diff(starts).tolist()))
    return da.Array(graph, name, chunks=chunks, meta=np.empty((0,) * len(shape),
                                                                trace.dtypes[v]))


def _gather_rows(*chunk_lists: list, sels: tuple, axis: int | None, layout: tuple) -> Any:
    return join_rows([_gather(*blocks, sels=sels, axis=axis, cut=None)
                      for blocks in zip(*chunk_lists)], layout)


def _gather(*blocks: Any, sels: tuple, axis: int | None, cut: tuple | None) -> Any:
    parts = [select(b, s) for b, s in zip(blocks, sels)]
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis or 0)
    return out if cut is None else rows(out, None, *cut)


@dataclass
class _State:
    """Per-model caches: traces by input signature, weights placed on a cluster."""

    traces: dict[tuple, GraphTrace] = field(default_factory=dict)
    tokens: dict[tuple[int, str], str] = field(default_factory=dict)
    placed: dict[str, Any] = field(default_factory=dict)  #: weight key -> Future
    client: Any = None


_states: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


def _state(model: Model) -> _State:
    if model not in _states:
        _states[model] = _State()
    return _states[model]


# --- weights ------------------------------------------------------------------------------------
def weight_key(model: Model, trace: GraphTrace, name: str, value: np.ndarray) -> str:
    """The content-addressed key name of a weight: ``tf-weight-<value>-<token>``."""
    tokens = _state(model).tokens
    k = (id(value), name)
    if k not in tokens:
        tokens[k] = tokenize(value)
    return f"tf-weight-{sanitize(name)}-{tokens[k]}"


def _live(future: Any, client: Any) -> bool:
    """Whether ``future`` can be used in graphs computed by ``client``."""
    return (future is not None and client is not None and future.client is client
            and future.status == "finished" and client.status == "running")


def weight_handle(model: Model, trace: GraphTrace, name: str, value: np.ndarray,
                  client: Any = None) -> da.Array:
    """A 0-d Dask array whose one key holds the whole weight: the future placed by
    :func:`to_cluster` when ``client`` holds one, else the array itself."""
    key = weight_key(model, trace, name, value)
    placed = _state(model).placed.get(key)
    data = placed if _live(placed, client) else value
    graph = HighLevelGraph.from_collections(key, {(key,): data}, dependencies=())
    return da.Array(graph, key, chunks=(), meta=np.empty((), value.dtype))


def place_weights(model: Model, client: Any, trace: GraphTrace, plans: list[UnitPlan],
                  consts: dict[str, np.ndarray]) -> dict[str, Any]:
    """Futures for the weights ``plans`` read: reused if already placed, else scattered to the
    workers of the units that read them (everywhere if some reader is unrestricted)."""
    state = _state(model)
    readers: dict[str, set[str] | None] = {}
    for p in plans:
        for src in p.sources:
            if src[0] != "weight":
                continue
            cur = readers.get(src[1], set())
            readers[src[1]] = None if cur is None or not p.unit.workers \
                else cur | set(p.unit.workers)
    futures, todo = {}, {}
    for name, workers in readers.items():
        key = weight_key(model, trace, name, consts[name])
        fut = _reuse(state, key, client)
        if fut is None:
            todo.setdefault(tuple(sorted(workers)) if workers is not None else None,
                            {})[(key,)] = consts[name]
        futures[name] = key
    for workers, data in todo.items():
        kw = {"broadcast": True} if workers is None else {"workers": list(workers)}
        for k, fut in client.scatter(data, hash=False, **kw).items():
            state.placed[k[0]] = _shared[(client.id, k[0])] = fut
    return {name: state.placed[key] for name, key in futures.items()}


#: Weights placed on a cluster by any model, by (client id, content-hashed key), held weakly:
#: a second model with equal weights reuses them; they go when no model holds them any more.
_shared: weakref.WeakValueDictionary[tuple[str, str], Any] = weakref.WeakValueDictionary()


def _reuse(state: _State, key: str, client: Any) -> Any:
    """The live future of weight ``key`` on ``client``'s cluster, if any model placed it."""
    fut = state.placed.get(key)
    if _live(fut, client):
        return fut
    fut = _shared.get((getattr(client, "id", None), key))
    if _live(fut, client):
        state.placed[key] = fut
        return fut
    return None


def to_cluster(model: Model, client: Any) -> dict[str, Any]:
    """Scatter every weight of ``model`` to all workers once (see :meth:`Model.to_cluster`)."""
    graph = model.graph
    state = _state(model)
    state.client = client
    known = all(v.shape is not None and all(isinstance(d, int) for d in v.shape[1:])
                for v in graph.inputs)
    if known:  # trace at the declared shapes so folded constants are placed too
        from taskflow.dask.lower import get_trace

        batch = [v for v in graph.inputs if not isinstance(v.shape[0], int)]
        trace = get_trace(model, {v.name: tuple(v.shape[1:]) for v in batch},
                          {v.name: tuple(v.shape) for v in graph.inputs if v not in batch},
                          {v.name: np.dtype(v.dtype or np.float32) for v in graph.inputs})
        consts = trace.consts
    else:
        trace, consts = None, {k: np.asarray(v) for k, v in graph.initializers.items()}
    todo = {}
    for name, value in consts.items():
        if value.nbytes > INLINE_CONST_BYTES:
            key = weight_key(model, trace, name, value)
            if _reuse(state, key, client) is None:
                todo[(key,)] = value
    if todo:
        futures = client.scatter(todo, broadcast=True, hash=False)
        for k, f in futures.items():
            state.placed[k[0]] = _shared[(client.id, k[0])] = f
    return dict(state.placed)
