"""Units: the pieces of a graph that become one Dask task per batch chunk.

A :class:`Unit` is a set of nodes run together by :func:`run_unit` (a tiny interpreter over the
op registry). How the graph is cut into units is the parallel mode:

- ``segments``  every batch-local node between two global nodes in one unit (data parallel):
  one task per chunk whatever the graph's shape. Dask's own blockwise fusion cannot do this for
  graphs with fan-out (it never fuses a layer read by two layers: ResNet shortcuts, SqueezeNet
  fire modules), so taskflow fuses before handing the graph to Dask;
- ``nodes``     one unit per node; Dask's blockwise optimisation fuses the chains;
- ``chains``    maximal linear chains, so parallel branches become separate tasks (branch);
- ``stages``    the topological order cut into k stages of about equal FLOPs (pipeline).

Model parallelism replaces a node by k block units, each with a slice of its weights
(:func:`taskflow.dask.plan.find_split`), whose outputs the consumers concatenate.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from taskflow import ops
from taskflow.dask.layout import ROWS, Layout, join_rows, take_rows
from taskflow.dask.trace import BATCH, CONST, META, GraphTrace, NodeInfo
from taskflow.errors import ShapeError, TaskflowError
from taskflow.executor import narrow_handoffs, placed_call, release_schedule
from taskflow.ir.placement import Slot, concat_slots

#: Constants up to this size travel inside the task (Reshape shapes, axes, scalars); larger ones
#: are weights: one Dask key each, sent once per worker, never copied into every task.
INLINE_CONST_BYTES = 1024


@dataclass
class Unit:
    label: str
    nodes: list[NodeInfo]
    whole: bool = False  #: runs once on the whole batch (a global node)
    workers: tuple[str, ...] | None = None  #: restrict its tasks to these workers
    rename: dict[str, str] = field(default_factory=dict)  #: weight -> block slice (model mode)
    block: int | None = None


@dataclass(frozen=True)
class Bind:
    """Where a program finds value ``name``: argument ``pos`` (element ``sel`` of a tuple),
    or the concatenation along ``axis`` of several such parts (model-parallel blocks).
    A batched value carries the batch with ``layout`` (see :mod:`taskflow.dask.trace`)."""

    name: str
    parts: tuple[tuple[int, int | None], ...]
    axis: int | None = None
    batched: bool = False
    layout: Layout = ROWS


@dataclass(frozen=True)
class Check:
    """The shape a program's output ``value`` (made by node ``node``) must have: ``shape``
    with the batch axis of ``layout`` set to rows x factor; ``None`` dims are not checked."""

    value: str
    node: str
    shape: tuple[int | None, ...]
    layout: Layout | None


@dataclass(frozen=True)
class Program:
    """What one task runs: nodes in order, with arguments bound to value names."""

    label: str
    nodes: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...], dict], ...]
    binds: tuple[Bind, ...]
    literals: tuple[tuple[str, np.ndarray], ...]
    outputs: tuple[str, ...]
    device: str = "cpu"
    whole: bool = False
    #: (node position, slot): convolutions that write into their Concat's buffer
    #: (:mod:`taskflow.ir.placement`).
    slots: tuple[tuple[int, Slot], ...] = ()
    checks: tuple[Check, ...] = ()


_kernels: dict[tuple[str, str], Any] = {}


def run_unit(program: Program, *args: Any) -> Any:
    """Run ``program`` on one chunk (or, for whole units, on lists of all chunks)."""
    _kernel_threads()
    env: dict[str, Any] = dict(program.literals)
    n_rows: tuple[int, str] | None = None
    for b in program.binds:
        parts = []
        for pos, sel in b.parts:
            a = args[pos] if b.batched else aligned_weight(args[pos])
            if program.whole and b.batched:
                blocks = [blk if sel is None else blk[sel] for blk in _flatten(a)]
                parts.append(join_rows(blocks, b.layout))
            else:
                parts.append(a if sel is None else a[sel])
        value = parts[0] if b.axis is None else np.concatenate(parts, axis=b.axis)
        env[b.name] = _aligned(value)
        if b.batched:
            n_rows = _rows_of(program, b, value, n_rows)
    release = _releases(program)
    slots = dict(program.slots)
    buffers: dict[int, Any] = {}
    for k, (name, op, ins, outs, attrs) in enumerate(program.nodes):
        fn = _kernels.get((op, program.device))
        if fn is None:
            fn = _kernels[(op, program.device)] = ops.get(op).kernel(program.device)
        argv = [env[i] if i else None for i in ins]
        try:
            slot = slots.get(k)
            if slot is None:
                results = ops.as_outputs(fn(*argv, **attrs))
            else:
                results = ops.as_outputs(placed_call(fn, argv, attrs, slot, buffers))
        except TaskflowError:
            raise
        except Exception as exc:
            shapes = [None if a is None else getattr(a, "shape", None) for a in argv]
            raise TaskflowError(f"node {name!r} ({op}) failed on inputs of shapes {shapes}: "
                                f"{type(exc).__name__}: {exc}") from exc
        env.update((o, r) for o, r in zip(outs, results) if o)
        for dead in release[k]:
            env.pop(dead, None)
        buffers.pop(k, None)
    if n_rows is not None:
        for c in program.checks:
            check_shape(c, env[c.value], n_rows[0], program.label)
    out = tuple(env[o] for o in program.outputs)
    return out[0] if len(out) == 1 else out


def _kernel_threads() -> None:
    """Hold this task thread to the kernel threads of the thread plan.

    Numba's thread count is per thread, and a Dask worker's task threads start at its pool
    size, not at what :class:`~taskflow.dask.threads.ThreadBudgetPlugin` set on the thread it
    ran on. A worker's pool is the core count whenever the client script imports taskflow's
    kernels (spawned workers re-import it before the plan's ``NUMBA_NUM_THREADS`` applies):
    a "2 workers x 1 thread x 1 kernel thread" cluster then ran every kernel on 2 threads,
    4 on 2 cores, and one worker ran on both cores. Without :mod:`taskflow.dask.threads`
    loaded no plan was applied in this process, and there is nothing to hold to.
    """
    plan = sys.modules.get("taskflow.dask.threads")
    if plan is not None:
        plan.ensure_kernel_threads()


def _rows_of(program: Program, b: Bind, value: Any, rows: tuple[int, str] | None
             ) -> tuple[int, str]:
    """The batch rows bound value ``b`` holds; every batched value of a task must agree."""
    axis, k, _ = b.layout
    shape = getattr(value, "shape", ())
    n = shape[axis] // k if len(shape) > axis else -1
    if n < 0 or (rows is not None and n != rows[0]):
        raise ShapeError(
            f"task {program.label!r}: value {b.name!r} has shape {tuple(shape)!r}, i.e. {n} "
            f"batch rows on axis {axis} (factor {k}), but value {rows[1] if rows else '?'!r} "
            f"holds {rows[0] if rows else '?'} rows; the Dask graph sliced the batch "
            f"inconsistently (a taskflow bug: please report it with the model)")
    return (n, b.name) if rows is None else rows


def check_shape(c: Check, value: Any, rows: int, label: str) -> None:
    """Raise :class:`ShapeError` unless ``value`` has the shape ``c`` declares for ``rows``."""
    want = list(c.shape)
    if c.layout is not None:
        want[c.layout[0]] = rows * c.layout[1]
    got = tuple(getattr(value, "shape", np.shape(value)))
    if len(got) != len(want) or any(w is not None and g != w for g, w in zip(got, want)):
        shown = tuple("?" if w is None else w for w in want)
        raise ShapeError(
            f"node {c.node!r} computed value {c.value!r} with shape {got!r} in task "
            f"{label!r} for {rows} batch rows, but the Dask graph declared {shown!r}; the "
            f"batch analysis was wrong for this model (a taskflow bug: please report it); "
            f"Model.run gives the right result meanwhile")


def _releases(program: Program) -> list[tuple[str, ...]]:
    """Per node of ``program``, the values to drop after it, as
    :class:`~taskflow.executor.ExecutionPlan` does. Without this a task holds every
    activation of its unit to the end (ResNet-50 at a chunk of 32: over 1 GB), and the cpu
    kernels' output buffers can never be recycled."""
    return release_schedule([(ins, outs) for _, _, ins, outs, _ in program.nodes],
                            set(program.outputs))


#: Aligned copies of weights that arrived unaligned, by id of the array the worker holds.
_realigned: dict[int, tuple[weakref.ref, np.ndarray]] = {}


def _aligned(a: Any) -> Any:
    """``a``, copied if its data is misaligned for its dtype.

    Arrays that ``client.scatter`` or a worker-to-worker transfer delivers to another process
    can start at any byte offset of the received frame. numpy's matmul then cannot call BLAS
    and falls back to a loop 20x slower (measured: 14 ms vs 0.7 ms for a 16x1024 @ 1024x1024
    float32 product on a process worker).
    """
    if isinstance(a, np.ndarray) and not a.flags.aligned:
        return np.array(a)
    return a


def aligned_weight(a: Any) -> Any:
    """Like :func:`_aligned`, but copies each weight once per process, not once per task."""
    if not isinstance(a, np.ndarray) or a.flags.aligned:
        return a
    hit = _realigned.get(id(a))
    if hit is not None and hit[0]() is a:
        return hit[1]
    key = id(a)
    _realigned[key] = (weakref.ref(a, lambda _, key=key: _realigned.pop(key, None)),
                       np.array(a))
    return _realigned[key][1]


def select(block: Any, sel: int | None) -> Any:
    return block if sel is None else block[sel]


def rows(block: Any, sel: int | None, start: int, stop: int, layout: Layout = ROWS) -> Any:
    """Batch rows ``start:stop`` of ``block`` (element ``sel``), along its batch layout."""
    return take_rows(select(block, sel), layout, start, stop)


def _flatten(a: Any) -> list[Any]:
    if isinstance(a, list):
        return [b for x in a for b in _flatten(x)]
    return [a]


# --- partitions ---------------------------------------------------------------------------------
def compute_preds(trace: GraphTrace) -> dict[int, set[int]]:
    """For each compute node, the compute nodes it reads from (through meta nodes)."""
    memo: dict[str, set[int]] = {}

    def sources(value: str) -> set[int]:
        if value not in memo:
            p = trace.producer.get(value)
            if p is None or p.role == "const":
                memo[value] = set()
            elif p.role == "meta":
                memo[value] = set().union(*(sources(i) for i in p.inputs))
            else:
                memo[value] = {p.index}
        return memo[value]

    return {n.index: set().union(*(sources(i) for i in n.inputs)) for n in trace.compute_nodes}


def partition(trace: GraphTrace, how: str = "segments", *, stages: int = 2,
              barriers: Sequence[int] = ()) -> list[Unit]:
    """Cut the compute nodes into units (see the module docstring); ``barriers`` are node
    indices that must be alone in their unit (model-parallel splits)."""
    nodes = trace.compute_nodes
    alone = {n.index for n in nodes if n.role == "global"} | set(barriers)
    if how == "nodes":
        return [_unit([n], n.index in alone, n) for n in nodes]
    preds = compute_preds(trace)
    if how == "segments":
        level: dict[int, int] = {}
        for n in nodes:
            level[n.index] = max((level[p] + (p in alone or n.index in alone)
                                  for p in preds[n.index]), default=0)
        groups: dict[Any, list[NodeInfo]] = {}
        for n in nodes:
            key = (level[n.index], n.index if n.index in alone else -1)
            groups.setdefault(key, []).append(n)
        return [_unit(g, k[1] >= 0, g[-1]) for k, g in sorted(groups.items())]
    if how == "chains":
        succ: dict[int, set[int]] = {}
        for i, ps in preds.items():
            for p in ps:
                succ.setdefault(p, set()).add(i)
        units: list[Unit] = []
        home: dict[int, Unit] = {}
        for n in nodes:
            ps = preds[n.index]
            p = next(iter(ps)) if len(ps) == 1 else None
            if (p is not None and n.index not in alone and p not in alone
                    and succ.get(p) == {n.index}):
                home[n.index] = home[p]
                home[p].nodes.append(n)
                home[p].label = n.label
            else:
                units.append(_unit([n], n.index in alone, n))
                home[n.index] = units[-1]
        return units
    if how == "stages":
        total = sum(n.flops for n in nodes) or 1
        units, acc, current = [], 0, None
        for n in nodes:
            stage = min(int(acc * stages / total), stages - 1)
            acc += n.flops
            if n.index in alone:
                units.append(_unit([n], True, n))
                units[-1].block = stage
                current = None
            elif current is None or current.block != stage:
                current = _unit([n], False, n)
                current.block = stage
                units.append(current)
            else:
                current.nodes.append(n)
                current.label = n.label
        return units
    raise ValueError(f"unknown partition {how!r}; expected segments, nodes, chains or stages")


def _unit(nodes: list[NodeInfo], whole: bool, last: NodeInfo) -> Unit:
    return Unit(label=last.label, nodes=list(nodes),
                whole=whole and any(n.role == "global" for n in nodes))


# --- programs -----------------------------------------------------------------------------------
@dataclass
class UnitPlan:
    """A unit with its program and where each program argument comes from.

    Sources: ``("input", name)``, ``("unit", k)``, ``("resplit", k, sel, layout)`` (per-chunk
    rows of a whole unit's batch value) and ``("weight", name)``.
    """

    unit: Unit
    program: Program
    sources: list[tuple]
    exports: list[str]


def build_plans(trace: GraphTrace, units: list[Unit], wanted: Sequence[str], device: str,
                consts: dict[str, np.ndarray],
                split_axis: dict[str, int]) -> tuple[list[UnitPlan], dict[str, Any]]:
    """Programs for ``units``; returns them and where each wanted output lives.

    ``consts`` holds every constant (with weight slices); ``split_axis`` maps the output of a
    split node to the axis its blocks concatenate along.
    """
    owner: dict[str, list[int]] = {}
    for k, u in enumerate(units):
        for n in u.nodes:
            for o in n.outputs:
                owner.setdefault(o, []).append(k)
    needs, bodies = [], []
    for u in units:
        body = _with_prelude(trace, u.nodes)
        produced = {o for n in body for o in n.outputs}
        need: list[str] = []
        for n in body:
            for i in n.inputs:
                i = u.rename.get(i, i)
                if i not in produced and i not in need:
                    need.append(i)
        needs.append(need)
        bodies.append(body)
    exports: list[list[str]] = [[] for _ in units]
    for k, need in enumerate(needs):
        for v in need:
            for p in owner.get(v, []):
                if p != k and v not in exports[p]:
                    exports[p].append(v)
    for v in wanted:
        for p in owner.get(v, []):
            if v not in exports[p]:
                exports[p].append(v)
    plans = []
    for k, u in enumerate(units):
        sources: list[tuple] = []
        binds, literals = [], []

        def arg(src: tuple, sources: list[tuple] = sources) -> int:
            if src not in sources:
                sources.append(src)
            return sources.index(src)

        for v in needs[k]:
            cls = trace.value_class.get(v, CONST)
            if v in consts or cls == CONST:
                c = consts[v]
                if c.nbytes <= INLINE_CONST_BYTES:
                    literals.append((v, c))
                else:
                    binds.append(Bind(v, ((arg(("weight", v)), None),)))
                continue
            batched = cls == BATCH
            layout = trace.layout(v) or ROWS
            if v in trace.batch_inputs or v in trace.fixed_inputs:
                binds.append(Bind(v, ((arg(("input", v)), None),), batched=batched,
                                  layout=layout))
                continue
            parts = []
            for p in owner[v]:
                sel = None if len(exports[p]) == 1 else exports[p].index(v)
                if units[p].whole and batched and not u.whole:
                    parts.append((arg(("resplit", p, sel, layout)), None))
                else:
                    parts.append((arg(("unit", p)), sel))
            axis = split_axis.get(v) if len(parts) > 1 else None
            binds.append(Bind(v, tuple(parts), axis, batched, layout))
        nodes = tuple((n.label, n.node.op, tuple(u.rename.get(i, i) for i in n.node.inputs),
                       tuple(n.node.outputs), dict(n.node.attrs)) for n in bodies[k])
        slots = () if device != "cpu" else tuple(concat_slots(
            [(op, ins, outs, attrs) for _, op, ins, outs, attrs in nodes],
            lambda v: _channels(trace, v), exports[k]).items())
        if device == "cpu":  # reduced layers hand each other narrow values within a task
            handoffs = narrow_handoffs([(op, ins, outs, attrs) for _, op, ins, outs, attrs
                                        in nodes], set(exports[k]), {j for j, _ in slots})
            nodes = tuple((label, op, ins, outs, handoffs.get(j, attrs))
                          for j, (label, op, ins, outs, attrs) in enumerate(nodes))
        checks = tuple(declared(trace, v) for v in exports[k] if v not in split_axis)
        program = Program(u.label, nodes, tuple(binds), tuple(literals), tuple(exports[k]),
                          device, u.whole, slots, checks)
        plans.append(UnitPlan(u, program, sources, exports[k]))
    where = {}
    for v in wanted:
        if v in owner:
            where[v] = ([(p, None if len(exports[p]) == 1 else exports[p].index(v))
                         for p in owner[v]], split_axis.get(v))
    return plans, where


def declared(trace: GraphTrace, v: str) -> Check:
    """The shape check of value ``v``: the same rule that declares its Dask shape
    (:meth:`GraphTrace.full_shape`), so a task never returns what the graph did not declare."""
    shape = tuple(None if d != d else int(d) for d in trace.full_shape(v, 0))
    p = trace.producer.get(v)
    return Check(v, p.name if p else v, shape, trace.layout(v))


def _channels(trace: GraphTrace, name: str) -> int | None:
    """The channel count of a traced 4-D value, else None."""
    shapes = trace.shapes.get(name)
    return shapes[0][1] if shapes is not None and len(shapes[0]) == 4 else None


def _with_prelude(trace: GraphTrace, nodes: list[NodeInfo]) -> list[NodeInfo]:
    """``nodes`` preceded by the meta nodes they read (recomputed per task: they are tiny)."""
    seen: dict[int, NodeInfo] = {}

    def visit(value: str) -> None:
        p = trace.producer.get(value)
        if p is not None and p.role == "meta" and p.index not in seen:
            for i in p.inputs:
                visit(i)
            seen[p.index] = p

    for n in nodes:
        for i in n.inputs:
            if trace.value_class.get(i) == META:
                visit(i)
    # topological positions order both: a prelude may read a value the unit itself produces
    return sorted([*seen.values(), *nodes], key=lambda n: n.index)
