"""The base class of scheduling policies (its subclasses live in :mod:`.policies` and
:mod:`.balancer`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from .snapshot import Snapshot, Suggestion


class Policy:
    """Base class: a named source of suggestions. Subclasses override the hooks they need.

    A hook reads a read-only :class:`~taskflow.schedulers.Snapshot` and yields suggestions
    (``SetPriority``, ``Pin``, ``Unpin``, ``Place``, ``Require``, ``Move`` from
    :mod:`taskflow.schedulers.snapshot`); :class:`TaskflowSchedulerPlugin` applies, rejects
    (with a logged reason) and counts them. A policy never touches the scheduler itself.

    Attributes
    ----------
    name : str
        Shown in metrics and the dashboard; also the name :func:`policies_from_names` knows.
    interval : float or None
        Seconds between :meth:`on_tick` calls; None: never.
    watch : tuple of str
        Key kinds whose arrival in memory calls :meth:`on_memory`.
    replaces_stealing : bool
        The plugin pauses Dask's own work stealing while this policy runs.

    Examples
    --------
    A policy that runs every ``tf-embed`` task before the others of its graph:

    >>> from taskflow.schedulers import Policy, Snapshot, TaskView
    >>> from taskflow.schedulers.snapshot import SetPriority
    >>> class EmbeddingsFirst(Policy):
    ...     name = "embeddings-first"
    ...     def on_graph(self, snap):
    ...         keys = tuple(k for k in snap.fresh if snap.tasks[k].prefix == "tf-embed")
    ...         if keys:
    ...             yield SetPriority(keys, shift=10, reason="embeddings feed everything")
    >>> snap = Snapshot(tasks={"a": TaskView("a", "tf-embed"), "b": TaskView("b", "tf-conv")},
    ...                 fresh=("a", "b"))
    >>> list(EmbeddingsFirst().on_graph(snap))
    [SetPriority(keys=('a',), shift=10, orders=None, reason='embeddings feed everything')]
    """

    name: ClassVar[str] = "policy"
    interval: float | None = None  # seconds between on_tick calls; None: no ticks
    watch: tuple[str, ...] = ()  # key kinds whose arrival in memory calls on_memory
    replaces_stealing: bool = False  # the plugin pauses Dask's own stealing while it runs

    def on_graph(self, snap: Snapshot) -> Iterator[Suggestion]:
        """Suggestions for a new graph; ``snap.fresh`` holds its keys.

        Examples
        --------
        >>> from taskflow.schedulers import Policy, Snapshot
        >>> list(Policy().on_graph(Snapshot()))                     # the base suggests nothing
        []
        """
        return iter(())

    def on_tick(self, snap: Snapshot) -> Iterator[Suggestion]:
        """Suggestions every ``interval`` seconds (e.g. moves between workers).

        Examples
        --------
        >>> from taskflow.schedulers import Policy, Snapshot
        >>> list(Policy().on_tick(Snapshot()))
        []
        """
        return iter(())

    def on_memory(self, snap: Snapshot) -> Iterator[Suggestion]:
        """Suggestions when a task of a kind in ``watch`` lands in memory (``snap.fresh``).

        Examples
        --------
        >>> from taskflow.schedulers import Policy, Snapshot
        >>> list(Policy().on_memory(Snapshot()))
        []
        """
        return iter(())

    def on_worker_lost(self, snap: Snapshot) -> Iterator[Suggestion]:
        """Suggestions after a worker left (e.g. lift pins to it).

        Examples
        --------
        >>> from taskflow.schedulers import Policy, Snapshot
        >>> list(Policy().on_worker_lost(Snapshot()))
        []
        """
        return iter(())

    def metrics(self) -> dict[str, Any]:
        """JSON-able state for the dashboard.

        Examples
        --------
        >>> from taskflow.schedulers import JobPriority
        >>> JobPriority(max_wait=60).metrics()
        {'jobs': {}, 'rate_per_s': 3.3333333333333335, 'unknown_classes': []}
        """
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
