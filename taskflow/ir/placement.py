"""Output placement: convolutions that write straight into the Concat they feed.

SqueezeNet's fire modules, Inception's branches and many detection necks concatenate
convolution outputs along channels. Computed naively, every such output is written once by
its convolution and once more by the Concat's copy. When a Concat's input is produced by a
convolution that nobody else reads, the interpreters (:class:`taskflow.executor.ExecutionPlan`
in process, :func:`taskflow.dask.units.run_unit` in Dask tasks) instead offer that convolution a
channel slice of the Concat's output buffer (:func:`taskflow.ops.cpu.common.output_slot`);
the Concat kernel then finds its inputs side by side and returns the buffer without copying.
This is the plan: which node writes where. It is an offer, never an obligation: a kernel
that does not take it (the numpy reference, an unusual shape) returns a fresh array and the
Concat copies as before, so results never depend on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: Ops whose cpu kernel can write its output into an offered Concat slice.
SLOT_WRITERS = frozenset({"Conv", "FusedConv", "MaxPool", "AveragePool"})
#: ... of which these only when at least MIN_SLOT_CHANNELS wide (see there).
GEMM_WRITERS = frozenset({"Conv", "FusedConv"})


#: Fewest channels of a convolution writing into a Concat. Narrower GEMM outputs written into
#: a wide buffer cost the convolution more than the copy saves (Inception v1's 32-channel
#: branches into 256-480 channels: 4% slower end to end; SqueezeNet's 64-256: 3-9% faster).
#: Pools write their rows element by element, so any width is fine for them.
MIN_SLOT_CHANNELS = 64


@dataclass(frozen=True)
class Slot:
    """Node output goes to channels ``[offset, offset + C)`` of Concat node ``concat``'s
    output, which has ``total`` channels."""

    concat: int
    offset: int
    total: int


def concat_slots(nodes: Sequence[tuple[str, Sequence[str], Sequence[str], dict]],
                 channels: Callable[[str], int | None],
                 keep: Iterable[str] = ()) -> dict[int, Slot]:
    """The slot of every node (by position in ``nodes``) that writes into its Concat: for
    Concats along channels whose every input is a pool's or a convolution's output (of at
    least :data:`MIN_SLOT_CHANNELS` channels) that nobody else reads.

    ``nodes`` are ``(op, inputs, outputs, attrs)`` in execution order; ``channels(value)``
    gives a value's static channel count when it is a 4-D tensor (else None); values in
    ``keep`` (graph or task outputs) are never placed, since a caller reads them.
    """
    keep = set(keep)
    producer: dict[str, int] = {}
    readers: Counter[str] = Counter()
    for k, (_, ins, outs, _) in enumerate(nodes):
        readers.update(i for i in ins if i)
        producer.update((o, k) for o in outs if o)
    slots: dict[int, Slot] = {}
    for c, (op, ins, _, attrs) in enumerate(nodes):
        if op != "Concat" or int(attrs.get("axis", 0)) not in (1, -3) or len(ins) < 2 \
                or len(set(ins)) != len(ins) or not all(ins):
            continue
        sizes = [channels(i) for i in ins]
        writers = [producer.get(value) for value in ins]
        if any(s is None for s in sizes) or not all(
                p is not None and p < c and nodes[p][0] in SLOT_WRITERS
                and (nodes[p][0] not in GEMM_WRITERS or size >= MIN_SLOT_CHANNELS)
                and readers[value] == 1 and value not in keep
                for p, value, size in zip(writers, ins, sizes)):
            # all or nothing: with one input copied anyway the Concat saves little, and its
            # producers' strided writes cost (DenseNet's concat(previous, new) ran 1.6x slower)
            continue
        total, offset = sum(sizes), 0
        for p, size in zip(writers, sizes):
            slots[p] = Slot(c, offset, total)
            offset += size
    return slots
