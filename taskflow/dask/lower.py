"""Lowering a model onto Dask: ``predict(model, dask_array)`` returns lazy Dask arrays.

How the graph becomes tasks:

1. The graph is traced at two batch sizes (:mod:`taskflow.dask.trace`) to learn which nodes run per
   batch chunk, and to fold constant subgraphs once.
2. The nodes are cut into units (:mod:`taskflow.dask.units`): in data-parallel mode one unit holds
   every batch-local node between two global nodes, so each chunk is ONE task however the graph
   branches. Each unit is one ``da.blockwise`` over the batch chunks.
3. Weights are 0-d Dask arrays whose single key holds the whole weight
   (``tf-weight-<value>-<token>``): every task reads the same key, so the scheduler ships each
   weight once per worker, never once per task. ``Model.to_cluster`` scatters them beforehand;
   the graphs then only reference the keys.
4. Between units, values travel as 1-d "chunk" arrays: dim 0 is the batch, and each block is
   the full activation. Every unit's index is then ``(0,)``; no unit contracts an index, which
   would stop Dask's blockwise fusion (``fuse=False`` relies on it to fuse per-node layers).
5. Where a chunk is little work (an MLP's 16 rows: 40 MFLOP, a fraction of a millisecond
   against Dask's 1-2 ms per task), consecutive chunks run as one task of about
   :data:`taskflow.dask.plan.TARGET_TASK_FLOPS` (:func:`task_groups`): one light task per run
   joins its input chunks, and one slicing task per chunk hands the output back in the
   chunks the input had (:func:`emit_grouped`).

Model- and pipeline-parallel plans restrict tasks to workers. Dask's array optimisation drops
annotations (see docs/notes/dask-scheduler-plugins.md), so with a client those plans are
submitted per chunk and per unit with ``client.submit(..., workers=...)``
(:mod:`taskflow.dask.parallel`), and the result is a Dask array backed by futures.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from taskflow.dask.layout import join_rows, take_rows
from taskflow.dask.memory import note_predict
from taskflow.dask.parallel import _state, place_weights, submit_plans, to_cluster, weight_handle
from taskflow.dask.trace import BATCH, GraphTrace, sanitize, trace_graph
from taskflow.dask.units import UnitPlan, build_plans, rows, run_unit, select
from taskflow.errors import InputError, ShapeError

if TYPE_CHECKING:
    from taskflow.dask.plan import Plan
    from taskflow.model import Model

#: Largest input chunk taskflow makes when it has to rechunk non-batch axes whole. A worker
#: thread holds its chunk plus the activations (often several times larger), and the machines
#: this targets have a few GiB per thread: 512 MiB per input chunk is the most that stays safe.
MAX_CHUNK_BYTES = 512 << 20
#: Inputs without a batch dim up to this size are computed when the graph is built, and the
#: trace runs on their actual values: small ones are often shapes, axes or repeats, which set
#: the shapes of everything after them (random stand-ins would trace another graph).
TRACE_VALUE_BYTES = 64 << 10


def predict(model: Model, x: Any, *, outputs: Sequence[str] | None = None,
            mode: str | None = None, plan: Plan | None = None, client: Any = None,
            chunk_size: int | None = None, fuse: bool = True,
            **plan_options: Any) -> da.Array | tuple[da.Array, ...]:
    """Run ``model`` lazily over a Dask array chunked along the batch (dim 0).

    Parameters
    ----------
    model : Model
    x : dask.array.Array, numpy.ndarray or dict of name to array
        The input (a dict for several inputs). A numpy array becomes one chunk, or chunks of
        ``chunk_size`` rows.
    outputs : list of str, optional
        Output names (default: all the model's outputs).
    mode : {"data", "model", "pipeline", "branch"}, optional
        Parallel mode (default: :func:`taskflow.dask.plan.make_plan` decides; "data" unless a
        layer's weights are too large for one worker).
    plan : Plan, optional
        A ready plan; overrides ``mode`` and ``plan_options``.
    client : distributed.Client, optional
        Needed by the model and pipeline modes to pin tasks to workers (default: the current
        client, if any). With a client, the weights are scattered to its cluster on first use,
        once per cluster (keys named by content hash, shared by models with equal weights),
        and the graphs only reference their keys: a second ``predict`` ships no weights.
    chunk_size : int, optional
        Rechunk the batch axis to this many rows per chunk.
    fuse : bool
        One task per chunk (True), or one Dask layer per node left to Dask's fusion (False).
    **plan_options
        Passed to :func:`taskflow.dask.plan.make_plan`: ``split``, ``split_bytes``,
        ``blocks``, ``stages``, ``workers``, and ``task_flops``: in data and branch modes,
        consecutive chunks with fewer FLOPs than this (default
        :data:`taskflow.dask.plan.TARGET_TASK_FLOPS`) are run as one task, and its result is
        split back into the input's chunks; ``task_flops=0`` keeps one task per chunk.

    Returns
    -------
    dask.array.Array, or a tuple of them for several outputs.

    Raises
    ------
    InputError, DTypeError
        As :meth:`Model.run` does, before anything is computed.
    ShapeError
        Input chunks along non-batch axes that cannot be made whole within
        :data:`MAX_CHUNK_BYTES`.
        Dim 0 of the batch inputs is not a batch: the graph does not run with 2 and 3 rows
        (:data:`taskflow.dask.trace.TRACE_BATCHES`). At compute time, a task whose result
        has another shape than the graph declared (never silently: see
        :func:`taskflow.dask.units.check_shape`).

    Warns
    -----
    UserWarning
        One per call, naming every node that mixes the batch's rows and why: those nodes run
        once on the whole batch, the rest per chunk, with the same numbers as ``Model.run``.

    Examples
    --------
    >>> import dask.array as da, taskflow as tf                  # doctest: +SKIP
    >>> model = tf.load("squeezenet.onnx")                       # doctest: +SKIP
    >>> x = da.random.random((64, 3, 224, 224), chunks=(16, -1, -1, -1)).astype("float32")
    >>> probs = model.predict(x)                                 # doctest: +SKIP
    >>> probs.compute().shape                                    # doctest: +SKIP
    (64, 1000)
    """
    from taskflow.dask import plan as plan_mod

    graph = model.graph
    feed = _as_feed(model, x, chunk_size)
    model.check_feed(feed)
    wanted = list(outputs) if outputs else graph.output_names
    bad = [n for n in wanted if n not in set(graph.output_names)]
    if bad:
        raise InputError(f"unknown output name(s) {bad}; the model's outputs are "
                         f"{sorted(graph.output_names)}")
    declared = {v.name: v for v in graph.inputs}
    batch_names = [n for n in feed
                   if declared[n].shape is None or not isinstance(declared[n].shape[0], int)]
    feed = _prepare_inputs(feed, batch_names, chunk_size)
    if client is None:
        client = _current_client()
    if plan is None:
        plan = plan_mod.make_plan(model, client, mode=mode, chunk_size=chunk_size, fuse=fuse,
                                  **plan_options)
    nonbatch = {n: tuple(feed[n].shape[1:]) for n in batch_names}
    fixed = {n: tuple(feed[n].shape) for n in feed if n not in batch_names}
    dtypes = {n: np.dtype(a.dtype) for n, a in feed.items()}
    values = {n: np.asarray(feed[n].compute()) for n in fixed
              if feed[n].nbytes <= TRACE_VALUE_BYTES}
    trace = get_trace(model, nonbatch, fixed, dtypes, values)
    message = trace.whole_batch_message() if batch_names else ""
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)
    units, consts, split_axis = plan_mod.units_for(plan, trace, model.device)
    plans, where = build_plans(trace, units, wanted, model.device, consts, split_axis)
    batch_chunks = feed[batch_names[0]].chunks[0] if batch_names else (1,)
    note_predict(model, trace, max(batch_chunks, default=1))  # to explain a KilledWorker
    if plan.mode in ("model", "pipeline") and client is None:
        warnings.warn(f"mode={plan.mode!r} without a distributed client: its blocks/stages are "
                      f"separate tasks, but nothing pins them to workers (pass client=)",
                      UserWarning, stacklevel=2)
    if any(p.unit.workers for p in plans) and client is not None:
        weights = place_weights(model, client, trace, plans, consts)
        arrays = submit_plans(client, trace, plans, where, wanted, feed, weights, consts,
                              batch_chunks)
    else:
        if client is not None:  # weights go to the cluster once; graphs reference their keys
            place_weights(model, client, trace, plans, consts)
        handles = {name: weight_handle(model, trace, name, consts[name], client)
                   for p in plans for src in p.sources if src[0] == "weight"
                   for name in [src[1]]}
        groups = task_groups(plan, trace, plans, batch_chunks) if batch_names else None
        if groups is None:
            arrays = emit_lazy(trace, plans, where, wanted, feed, handles, consts, batch_chunks)
        else:
            arrays = emit_grouped(trace, plans, where, wanted, feed, handles, consts,
                                  batch_chunks, groups)
    result = tuple(arrays[n] for n in wanted)
    return result[0] if len(result) == 1 else result


def get_trace(model: Model, nonbatch: Mapping[str, tuple[int, ...]],
              fixed: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, np.dtype],
              values: Mapping[str, np.ndarray] | None = None) -> GraphTrace:
    """The (cached) trace of ``model`` for these input shapes, dtypes and fixed-input values."""
    key = (tuple(sorted(nonbatch.items())), tuple(sorted(fixed.items())),
           tuple(sorted((k, v.str) for k, v in dtypes.items())),
           tokenize(sorted((values or {}).items())))
    state = _state(model)
    if key not in state.traces:
        state.traces[key] = trace_graph(model._plan, nonbatch, fixed, dtypes, values)
    return state.traces[key]


# --- inputs -------------------------------------------------------------------------------------
def _as_feed(model: Model, x: Any, chunk_size: int | None) -> dict[str, Any]:
    names = model.graph.input_names
    if not isinstance(x, Mapping):
        if len(names) != 1:
            raise InputError(f"the model has {len(names)} inputs {names}; pass a dict "
                             f"name -> dask array")
        x = {names[0]: x}
    feed = {}
    for name, a in x.items():
        if not isinstance(a, da.Array):
            a = np.asarray(a)
            rows_ = chunk_size or max(a.shape[0] if a.ndim else 1, 1)
            a = da.from_array(a, chunks=(rows_, *a.shape[1:]) if a.ndim else ())
        feed[name] = a
    return feed


def _prepare_inputs(feed: dict[str, da.Array], batch_names: list[str],
                    chunk_size: int | None) -> dict[str, da.Array]:
    """Whole non-batch axes (warn, or refuse past :data:`MAX_CHUNK_BYTES`); one batch
    chunking shared by every batch input."""
    out = {}
    for name, a in feed.items():
        if any(math.isnan(s) for s in a.shape):
            raise ShapeError(f"input {name!r} has unknown chunk sizes {a.chunks}; call "
                             f"x.compute_chunk_sizes() first")
        if name not in batch_names:
            out[name] = a.rechunk(-1) if a.npartitions > 1 else a
            continue
        if chunk_size:
            a = a.rechunk({0: chunk_size})
        split = [k for k in range(1, a.ndim) if len(a.chunks[k]) > 1]
        if split:
            per_row = math.prod(a.shape[1:]) * a.dtype.itemsize
            biggest = max(a.chunks[0]) * per_row
            if biggest > MAX_CHUNK_BYTES:
                fit = max(MAX_CHUNK_BYTES // max(per_row, 1), 1)
                raise ShapeError(
                    f"input {name!r} with chunks {a.chunks} is split along non-batch axis "
                    f"{split}; whole non-batch axes would make chunks of {biggest / 2**20:.0f} "
                    f"MiB (limit {MAX_CHUNK_BYTES / 2**20:.0f} MiB, "
                    f"taskflow.dask.lower.MAX_CHUNK_BYTES); rechunk with "
                    f"x.rechunk({{0: {fit}, {', '.join(f'{k}: -1' for k in split)}}})")
            warnings.warn(f"input {name!r} is chunked along non-batch axis {split} "
                          f"(chunks {a.chunks}); taskflow needs whole non-batch axes and "
                          f"rechunks it (pass chunks=(n, {', '.join(['-1'] * (a.ndim - 1))}) to "
                          f"avoid this)", UserWarning, stacklevel=3)
            a = a.rechunk({k: -1 for k in range(1, a.ndim)})
        out[name] = a
    if batch_names:
        chunks = out[batch_names[0]].chunks[0]
        for name in batch_names[1:]:
            if out[name].chunks[0] != chunks:
                out[name] = out[name].rechunk({0: chunks})
    return out


def _current_client() -> Any:
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


# --- tasks of several chunks -------------------------------------------------------------------
def task_groups(plan: Plan, trace: GraphTrace, plans: list[UnitPlan],
                batch_chunks: tuple[int, ...]) -> tuple[tuple[int, int], ...] | None:
    """The runs of consecutive chunks each task covers (:func:`~taskflow.dask.plan.group_chunks`
    on the per-row FLOPs of the per-chunk nodes), or None for one task per chunk."""
    from taskflow.dask.plan import group_chunks

    if plan.mode not in ("data", "branch") or len(batch_chunks) < 2:
        return None
    local = {n.index: n for p in plans if not p.unit.whole for n in p.unit.nodes}
    row_flops = sum(n.flops for n in local.values())
    values = [*trace.batch_inputs, *(o for n in local.values() for o in n.outputs
                                     if trace.value_class.get(o) == BATCH)]
    row_bytes = max((trace.row_bytes(v) for v in values), default=0)
    groups = group_chunks(batch_chunks, row_flops, threads=plan.threads,
                          target=plan.task_flops, row_bytes=row_bytes)
    return None if len(groups) == len(batch_chunks) else groups


def emit_grouped(trace: GraphTrace, plans: list[UnitPlan], where: dict[str, list],
                 wanted: Sequence[str], feed: dict[str, da.Array], handles: dict[str, da.Array],
                 consts: dict[str, np.ndarray], batch_chunks: tuple[int, ...],
                 groups: tuple[tuple[int, int], ...]) -> dict[str, Any]:
    """:func:`emit_lazy` with one task per run of chunks in ``groups``: each batch input's
    chunks are joined per run (one light task per run), and each batch output is split back
    into ``batch_chunks`` (one slicing task per chunk, a view of its run's result).

    Why tasks that slice, not a rechunk of the output: Dask's rechunk makes two tasks per
    output chunk here (a split and a merge alias), where one slice says it all; and the
    chunks a user asked for must stay (they may be zipped with other arrays chunked alike).
    """
    group_rows = tuple(int(sum(batch_chunks[a:b])) for a, b in groups)
    joined = {n: _join_chunks(feed[n], n, groups, group_rows) for n in trace.batch_inputs}
    arrays = emit_lazy(trace, plans, where, wanted, {**feed, **joined}, handles, consts,
                       group_rows, out_chunks=batch_chunks)
    out = {}
    for v, a in arrays.items():
        layout = trace.layout(v)
        if v in feed:
            out[v] = feed[v]
        elif layout is not None and layout[2] == 1 and a.ndim > layout[0] \
                and a.chunks[layout[0]] == tuple(r * layout[1] for r in group_rows):
            out[v] = _split_chunks(a, v, layout, groups, batch_chunks)
        else:
            out[v] = a
    return out


def _join_chunks(a: da.Array, n: str, groups: tuple[tuple[int, int], ...],
                 group_rows: tuple[int, ...]) -> da.Array:
    """Batch input ``a`` (named ``n``) with one chunk per run of ``groups`` (its non-batch
    axes are whole)."""
    name = f"tf-group-{sanitize(n)}-{tokenize(a.name, groups)}"
    rest = (0,) * (a.ndim - 1)
    layer = {(name, g, *rest): (_join, [(a.name, j, *rest) for j in range(lo, hi)])
             for g, (lo, hi) in enumerate(groups)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[a])
    return da.Array(graph, name, chunks=(group_rows, *a.chunks[1:]), meta=a._meta)


def _join(blocks: list[np.ndarray]) -> np.ndarray:
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)


def _split_chunks(a: da.Array, v: str, layout: tuple[int, int, int],
                  groups: tuple[tuple[int, int], ...],
                  batch_chunks: tuple[int, ...]) -> da.Array:
    """Output ``a`` (one chunk per run of ``groups`` on its batch axis) in ``batch_chunks``."""
    axis, factor, _ = layout
    if any(len(c) != 1 for k, c in enumerate(a.chunks) if k != axis):
        return a.rechunk({axis: tuple(c * factor for c in batch_chunks)})  # not made here
    name = f"tf-split-{sanitize(v)}-{tokenize(a.name, groups, batch_chunks)}"
    starts = np.concatenate([[0], np.cumsum(batch_chunks)]).astype(int).tolist()

    def key(base: str, j: int) -> tuple:
        return (base, *(j if k == axis else 0 for k in range(a.ndim)))

    layer = {}
    for g, (lo, hi) in enumerate(groups):
        for j in range(lo, hi):
            layer[key(name, j)] = (take_rows, key(a.name, g), layout,
                                   starts[j] - starts[lo], starts[j + 1] - starts[lo])
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[a])
    chunks = tuple(tuple(c * factor for c in batch_chunks) if k == axis else c
                   for k, c in enumerate(a.chunks))
    return da.Array(graph, name, chunks=chunks, meta=a._meta)


# --- lazy emission ------------------------------------------------------------------------------
def emit_lazy(trace: GraphTrace, plans: list[UnitPlan], where: dict[str, list],
              wanted: Sequence[str], feed: dict[str, da.Array], handles: dict[str, da.Array],
              consts: dict[str, np.ndarray], batch_chunks: tuple[int, ...],
              out_chunks: tuple[int, ...] | None = None) -> dict[str, Any]:
    """One ``da.blockwise`` per unit; returns the wanted outputs as Dask arrays.

    ``out_chunks``: the batch chunks of outputs gathered by one task (default
    ``batch_chunks``)."""
    arrays: dict[int, tuple[da.Array, tuple]] = {}
    fixed = {n: _to_handle(feed[n], f"tf-input-{sanitize(n)}") for n in trace.fixed_inputs}
    resplits: dict[tuple, da.Array] = {}
    starts = np.concatenate([[0], np.cumsum(batch_chunks)]).astype(int).tolist()

    def resplit(p: int, sel: int | None, layout: tuple[int, int]) -> da.Array:
        """Per-chunk rows of a whole unit's batch value, sliced along its batch layout."""
        if (p, sel) not in resplits:
            src = arrays[p][0]
            name = f"tf-rows-{tokenize(src.name, sel, layout, batch_chunks)}"
            layer = {(name, j): (rows, (src.name,), sel, starts[j], starts[j + 1], layout)
                     for j in range(len(batch_chunks))}
            graph = HighLevelGraph.from_collections(name, layer, dependencies=[src])
            resplits[(p, sel)] = da.Array(graph, name, chunks=(batch_chunks,),
                                          meta=np.empty((0,), object))
        return resplits[(p, sel)]

    for k, up in enumerate(plans):
        pairs: list[Any] = []
        for src in up.sources:
            if src[0] == "input":
                a = feed[src[1]] if src[1] in trace.batch_inputs else fixed[src[1]]
                pairs += [a, tuple(range(a.ndim))]
            elif src[0] == "unit":
                pairs += list(arrays[src[1]])
            elif src[0] == "resplit":
                pairs += [resplit(src[1], src[2], src[3]), (0,)]
            else:
                pairs += [handles[src[1]], ()]
        name = f"tf-{up.unit.label}-{tokenize(up.program, [a.name for a in pairs[::2]])}"
        fn = partial(run_unit, up.program)
        if up.unit.whole:
            arr = da.blockwise(fn, (), *pairs, concatenate=False, align_arrays=False,
                               meta=np.empty((), object), name=name)
            arrays[k] = (arr, ())
            continue
        v = up.exports[0] if len(up.exports) == 1 else None
        if v is not None and v in wanted and trace.value_class.get(v) == BATCH \
                and len(where[v][0]) == 1 and trace.layout(v)[2] == 1:
            # the unit's blocks are the output's chunks: label 0 (the chunk index) sits on the
            # output's batch axis, labels of this unit's own on the others
            axis, factor, _ = trace.layout(v)
            shape = trace.full_shape(v, 0)
            base = _FRESH * (k + 2)
            ind = tuple(0 if i == axis else base + i for i in range(len(shape)))
            new = {base + i: int(d) for i, d in enumerate(shape) if i != axis}
            adjust = {0: partial(_times, factor=factor)} if factor != 1 else None
            arr = da.blockwise(fn, ind, *pairs, concatenate=True, align_arrays=False,
                               new_axes=new, adjust_chunks=adjust,
                               meta=np.empty((0,) * len(ind), trace.dtypes[v]), name=name)
            arrays[k] = (arr, ind)
        else:
            arr = da.blockwise(fn, (0,), *pairs, concatenate=True, align_arrays=False,
                               meta=np.empty((0,), object), name=name)
            arrays[k] = (arr, (0,))
    out = {}
    for v in wanted:
        if v in feed:
            out[v] = feed[v]
        elif v in consts:
            out[v] = da.from_array(consts[v], chunks=consts[v].shape,
                                   name=f"tf-const-{sanitize(v)}-{tokenize(consts[v])}")
        else:
            out[v] = _assemble(trace, v, where[v], plans, arrays, batch_chunks,
                               out_chunks or batch_chunks)
    return out


def _assemble(trace: GraphTrace, v: str, where: tuple[list, int | None],
              plans: list[UnitPlan], arrays: dict, batch_chunks: tuple[int, ...],
              out_chunks: tuple[int, ...]) -> da.Array:
    """The user-facing array of output ``v`` from the unit(s) that produce it: chunked along
    its batch axis like the input's batch (``out_chunks`` where one task gathers it whole);
    one chunk if it does not carry the batch."""
    parts, axis = where
    shape = trace.full_shape(v, int(sum(batch_chunks)))
    dtype = trace.dtypes[v]
    meta = np.empty((0,) * len(shape), dtype)
    p0, sel0 = parts[0]
    if len(parts) == 1 and sel0 is None and not plans[p0].unit.whole \
            and arrays[p0][0].dtype != object:  # the unit's blocks are already this output's
        return arrays[p0][0]
    sels = tuple(sel for _, sel in parts)
    fn = partial(_gather, sels=sels, axis=axis)
    srcs = [arrays[p] for p, _ in parts]
    name = f"tf-out-{sanitize(v)}-{tokenize([a.name for a, _ in srcs], sels)}"
    layout = trace.layout(v)
    if any(plans[p].unit.whole for p, _ in parts):
        # one task gathers the whole value; unknown dims (nan) stay unknown to Dask
        deps = [a for a, _ in srcs]
        assert all(a.ndim == 0 for a in deps), f"output {v!r} mixes whole and chunked parts"
        key = (name, *(0,) * len(shape))
        graph = HighLevelGraph.from_collections(
            name, {key: (fn, *[(a.name,) for a in deps])}, dependencies=deps)
        arr = da.Array(graph, name, chunks=tuple((d,) for d in shape), meta=meta)
        if layout is None or layout[2] != 1:
            return arr
        batch_axis, factor, _ = layout
        return arr.rechunk({batch_axis: tuple(c * factor for c in out_chunks)})
    assert layout is not None, f"per-chunk output {v!r} without a batch layout"
    batch_axis, factor, outer = layout
    if outer != 1:
        # the batch is not outermost on its axis (``(S*B, E)``): no chunk is a contiguous
        # block of the output, so one task joins them and the output is one chunk
        key = (name, *(0,) * len(shape))
        fn = partial(_gather_rows, sels=sels, axis=axis, layout=layout)
        graph = HighLevelGraph.from_collections(
            name, {key: (fn, *[[(a.name, j) for j in range(len(batch_chunks))]
                                for a, _ in srcs])}, dependencies=[a for a, _ in srcs])
        return da.Array(graph, name, chunks=tuple((int(d),) for d in shape), meta=meta)
    ind = tuple(0 if i == batch_axis else _FRESH + i for i in range(len(shape)))
    pairs = [x for a, a_ind in srcs for x in (a, a_ind)]
    new = {_FRESH + i: int(d) for i, d in enumerate(shape) if i != batch_axis}
    adjust = {0: partial(_times, factor=factor)} if factor != 1 else None
    return da.blockwise(fn, ind, *pairs, new_axes=new, adjust_chunks=adjust, meta=meta,
                        concatenate=True, align_arrays=False, name=name)


#: Blockwise index labels for an output's non-batch axes start here (the batch chunk index is
#: label 0, an input's own axes are 0..ndim-1; unit k uses labels from ``_FRESH * (k + 2)``):
#: far from each other, so no two arrays share a label by accident.
_FRESH = 1000


def _times(chunk: int, factor: int) -> int:
    return chunk * factor


def _gather_rows(*chunk_lists: list, sels: tuple, axis: int | None,
                 layout: tuple[int, int, int]) -> Any:
    """Every chunk of an output (one list per part), joined along its batch layout."""
    return join_rows([_gather(*blocks, sels=sels, axis=axis) for blocks in zip(*chunk_lists)],
                     layout)


def _gather(*blocks: Any, sels: tuple, axis: int | None) -> Any:
    parts = [select(b, s) for b, s in zip(blocks, sels)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis or 0)


def _identity(b: Any) -> Any:
    return b


def _to_handle(a: da.Array, prefix: str) -> da.Array:
    """A non-batch input as a 0-d array holding the whole input."""
    return da.blockwise(_identity, (), a, tuple(range(a.ndim)), concatenate=True,
                        meta=np.empty((), a.dtype), name=f"{prefix}-{tokenize(a.name)}")


__all__ = ["MAX_CHUNK_BYTES", "get_trace", "predict", "to_cluster", "weight_handle"]
