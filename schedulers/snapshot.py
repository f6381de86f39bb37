"""What a policy sees and what it may say: read-only views and suggestions.

Policies never touch ``distributed`` objects. The plugin copies the few fields they need into
the immutable views below (``NamedTuple``: cheap to build for 10,000 tasks, and tests build
them by hand), and applies, rejects or counts the suggestions the policies yield.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterator, Mapping, Set
from types import MappingProxyType
from typing import Any, NamedTuple

Key = Hashable
EMPTY: Mapping[Any, Any] = MappingProxyType({})


class TaskView(NamedTuple):
    """One task as a policy sees it.

    ``priority`` is Dask's tuple ``(-user priority, generation, dask.order index)``: smaller runs
    first (``JobPriority`` puts its negated shift in place of the generation). ``prefix`` is
    its kind (:func:`task_kind`). ``restrictions`` is the set of worker addresses the task is
    restricted to (None: any), ``loose`` whether it may run elsewhere when none of them is
    there. ``nbytes`` is its result's size, ``input_nbytes`` that of its
    dependencies.

    Examples
    --------
    Tests build views by hand:

    >>> from taskflow.schedulers import TaskView
    >>> view = TaskView(("tf-conv1-3f9a2c71", 0), "tf-conv1", state="processing",
    ...                 processing_on="tcp://10.0.0.7:4001")
    >>> view.prefix, view.restrictions is None
    ('tf-conv1', True)
    """

    key: Key
    prefix: str
    state: str = "released"
    priority: tuple = (0, 0, 0)
    dependencies: tuple = ()
    dependents: tuple = ()
    annotations: Mapping[str, Any] = EMPTY
    restrictions: frozenset | None = None
    loose: bool = False
    resources: Mapping[str, float] = EMPTY
    processing_on: str | None = None
    who_has: frozenset = frozenset()
    nbytes: int = 0
    input_nbytes: int = 0


class WorkerView(NamedTuple):
    """One worker: its threads and resources, and what the scheduler has sent it.

    ``prefix_counts`` counts its processing tasks per key prefix (all of them);
    ``candidates`` holds its lowest-priority processing tasks, lowest first: the ones a
    balancer may move (it is not told which have started: the handshake sorts that out).

    Examples
    --------
    >>> from taskflow.schedulers import WorkerView
    >>> gpu = WorkerView("tcp://10.0.0.8:4001", nthreads=1, resources={"GPU": 1})
    >>> gpu.resources.get("GPU", 0) >= 1
    True
    """

    address: str
    nthreads: int = 1
    resources: Mapping[str, float] = EMPTY
    status: str = "running"
    prefix_counts: Mapping[str, int] = EMPTY
    candidates: tuple = ()
    nbytes: int = 0


class Snapshot(NamedTuple):
    """The state a policy decides from; built by the plugin for one hook call.

    ``fresh`` lists the keys just submitted (``update_graph``), in submission order.
    ``durations`` is seconds per task by key prefix (measured, else Dask's estimate);
    ``rates`` is measured seconds per task by ``(worker, prefix)`` (EWMA, one thread).
    ``bandwidth`` is Dask's estimate of bytes/s between workers; ``in_flight`` are keys being
    moved; ``annotations`` is ``{name: {key: value}}`` as
    submitted (global annotations reach every task, even those made by graph optimisation).
    Two aggregates of ``fresh`` save policies a view per task on big graphs: ``input_kinds``,
    the kinds of the tasks they read that existed before, and ``ready``, per kind the fresh
    keys without restrictions whose inputs are all in memory, by priority.

    Examples
    --------
    A policy is tested on a snapshot built by hand, without a cluster:

    >>> from taskflow.schedulers import Resources, Snapshot, TaskView
    >>> snap = Snapshot(tasks={"a": TaskView("a", "tf-conv1"), "b": TaskView("b", "tf-fc")},
    ...                 fresh=("a", "b"), annotations={"taskflow_device": {"a": "gpu"}})
    >>> list(Resources().on_graph(snap))
    [Require(key='a', resources={'GPU': 1.0}, reason='needs a GPU')]
    """

    now: float = 0.0
    tasks: Mapping[Key, TaskView] = EMPTY
    workers: Mapping[str, WorkerView] = EMPTY
    fresh: tuple = ()
    durations: Mapping[str, float] = EMPTY
    rates: Mapping[tuple[str, str], float] = EMPTY
    client: str | None = None
    in_flight: frozenset = frozenset()
    annotations: Mapping[str, Mapping[Key, Any]] = EMPTY
    input_kinds: Set[str] = frozenset()
    ready: Mapping[str, tuple] = EMPTY
    bandwidth: float = 100e6


class _Lazy:
    """A value computed on first use (the snapshot's aggregates cost only when read)."""

    def __init__(self, compute: Any):
        self._compute, self._value = compute, None

    def value(self) -> Any:
        if self._value is None:
            self._value = self._compute()
        return self._value


class LazySet(_Lazy, Set):
    def __contains__(self, x: Any) -> bool:
        return x in self.value()

    def __iter__(self) -> Iterator:
        return iter(self.value())

    def __len__(self) -> int:
        return len(self.value())


class LazyMapping(_Lazy, Mapping):
    def __getitem__(self, k: Any) -> Any:
        return self.value()[k]

    def __iter__(self) -> Iterator:
        return iter(self.value())

    def __len__(self) -> int:
        return len(self.value())



# --- suggestions --------------------------------------------------------------------------------
class SetPriority(NamedTuple):
    """Change the priority of fresh tasks ``keys`` (one suggestion for a whole job).

    ``shift``, when given, ranks the tasks among those of equal Dask user priority (higher
    runs first): it replaces Dask's submission generation, the second element of the
    priority, so the user's own ``priority=`` keeps going first. ``orders``, when given,
    replaces each task's ``dask.order`` index (parallel to ``keys``).

    Examples
    --------
    >>> from taskflow.schedulers import SetPriority
    >>> SetPriority(("x-1", "x-2"), shift=100, reason="interactive job")
    SetPriority(keys=('x-1', 'x-2'), shift=100, orders=None, reason='interactive job')
    """

    keys: tuple
    shift: float | None = None
    orders: tuple | None = None
    reason: str = ""


class Pin(NamedTuple):
    """Run ``key`` only on ``workers`` (hard restriction) until the job ends or they are lost.

    Examples
    --------
    >>> from taskflow.schedulers import Pin
    >>> pin = Pin("tf-fc1.s0-3f9a2c71", frozenset({"tcp://10.0.0.7:4001"}),
    ...           reason="holds its weights")
    >>> sorted(pin.workers)
    ['tcp://10.0.0.7:4001']
    """

    key: Key
    workers: frozenset
    reason: str = ""


class Unpin(NamedTuple):
    """Lift a restriction this plugin set (its workers are gone).

    Examples
    --------
    >>> from taskflow.schedulers import Unpin
    >>> Unpin("tf-fc1.s0-3f9a2c71", reason="pinned workers lost")
    Unpin(key='tf-fc1.s0-3f9a2c71', reason='pinned workers lost')
    """

    key: Key
    reason: str = ""


class Place(NamedTuple):
    """Send fresh tasks ``keys`` to ``worker`` (a loose restriction: anywhere if that worker
    is gone; they may still be moved).

    Examples
    --------
    >>> from taskflow.schedulers import Place
    >>> Place(("chunk-0", "chunk-1"), "tcp://10.0.0.7:4001", reason="fastest worker").worker
    'tcp://10.0.0.7:4001'
    """

    keys: tuple
    worker: str
    reason: str = ""


class Require(NamedTuple):
    """Run ``key`` only on workers declaring ``resources`` (e.g. ``{"GPU": 1}``).

    Examples
    --------
    >>> from taskflow.schedulers import Require
    >>> Require("tf-conv1-3f9a2c71", {"GPU": 1}, reason="cupy kernel").resources
    {'GPU': 1}
    """

    key: Key
    resources: Mapping[str, float]
    reason: str = ""


class Move(NamedTuple):
    """Move a queued task from ``victim`` to ``thief`` through Dask's stealing handshake;
    ``gain`` is the estimated makespan saving in seconds.

    Examples
    --------
    >>> from taskflow.schedulers import Move
    >>> m = Move("chunk-41", victim="tcp://10.0.0.7:4001", thief="tcp://10.0.0.8:4001", gain=1.8)
    >>> m.gain > 0
    True
    """

    key: Key
    victim: str
    thief: str
    gain: float = 0.0
    reason: str = ""


Suggestion = SetPriority | Pin | Unpin | Place | Require | Move



_TOKEN = re.compile(r"-[0-9a-f]{8,}$")


def task_kind(name: str) -> str:
    """A task's kind from its key name, for taskflow keys finer than Dask's key prefix.

    Dask's ``key_split`` stops at the first word with a digit, so ``tf-conv1-<token>`` and
    ``tf-fc2-<token>`` both become ``tf``; here they stay ``tf-conv1`` and ``tf-fc2``.

    >>> task_kind("tf-layer1.s0-2b3c4d5e6f708192a3b4c5d6e7f8091a")
    'tf-layer1.s0'
    """
    return _TOKEN.sub("", name)
