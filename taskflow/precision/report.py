"""What reduced precision did to a model: :class:`LayerChoice`, :class:`CompressionReport` and
:func:`evaluate` (accuracy and speed against fp32 on held-out rows)."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from taskflow.errors import InputError
from taskflow.ir.graph import Graph

if TYPE_CHECKING:
    from taskflow.model import Model


@dataclass
class LayerChoice:
    """One contraction's measured choice between its reduced and its fp32 kernel.

    Attributes
    ----------
    name, op : str
        The node (in the executed graph) and its op.
    shapes : tuple of tuple of int
        The shapes of the input and the weight the kernels were timed on.
    candidate : str
        The reduced precision tried: ``"bf16"`` or ``"int8"``.
    precision : str
        What runs: ``candidate``, or ``"fp32"`` when the reduced kernel was not faster.
    fp32_ms, reduced_ms : float or None
        Best time of one call of each kernel (None: not measured, ``choose="all"``).

    Examples
    --------
    >>> c = LayerChoice("fc1", "FusedGemm", ((8, 64), (32, 64)), "int8", "int8", 0.20, 0.10)
    >>> c.speedup
    2.0
    """

    name: str
    op: str
    shapes: tuple[tuple[int, ...], ...]
    candidate: str
    precision: str
    fp32_ms: float | None = None
    reduced_ms: float | None = None

    @property
    def speedup(self) -> float | None:
        """``fp32_ms / reduced_ms`` (None where not measured).

        Examples
        --------
        >>> LayerChoice("c", "FusedConv", (), "bf16", "fp32", 1.0, 2.0).speedup
        0.5
        """
        if not self.fp32_ms or not self.reduced_ms:
            return None
        return self.fp32_ms / self.reduced_ms


@dataclass
class CompressionReport:
    """What reduced precision did to a model: size, layers, accuracy against fp32, speed.

    :meth:`taskflow.Model.with_precision` and :meth:`taskflow.Model.quantize` attach one as
    ``precision_report`` (size and layers); :func:`evaluate` fills in accuracy and speed on
    held-out data. ``str(report)`` is what ``taskflow quantize`` prints.

    Attributes
    ----------
    precision : str
        ``"bf16"``, ``"int8"`` or ``"fp32"``.
    mode : str
        ``"static"`` or ``"dynamic"`` for int8 (``""`` otherwise).
    method : str
        The calibration method of static int8 (``"minmax"``, ``"percentile"``, ``"entropy"``).
    per_channel : bool
        Weights quantised per output channel (int8).
    bytes_before, bytes_after : int
        The weights as :meth:`taskflow.Model.save` writes them, before and after (int8: the
        QDQ file's int8 weights; bf16 saves fp32, so both are equal).
    layers : list of LayerChoice
        Every candidate layer, with what runs.
    backend : str
        What runs a reduced GEMM here (:func:`taskflow.ops.cpu.lowp_engine.lowp_backend`).
    rows : int
        Held-out rows compared by :func:`evaluate` (0: not evaluated).
    top1_agreement : float or None
        Fraction of rows (and positions) whose argmax over the last axis of the first output
        equals fp32's: for classifiers.
    cosine_mean, cosine_min : float or None
        Cosine similarity of each row of the first output with fp32's: for embeddings.
    max_abs_error, mean_abs_error : float or None
        Of the first output against fp32.
    batch : int
        Rows of the batch both models were timed on.
    fp32_ms, reduced_ms : float or None
        Best time of one batch (interleaved runs in this process).
    notes : list of str
        Anything the numbers need said with them.

    Examples
    --------
    >>> r = CompressionReport("int8", mode="static", method="minmax", bytes_before=4000,
    ...                       bytes_after=1000, backend="mkl-avx2")
    >>> r.size_ratio
    4.0
    >>> print(r)                                                # doctest: +ELLIPSIS
    precision  int8 (static, minmax calibration, per-channel weights) on mkl-avx2
    size       4.0 kB -> 1.0 kB (4.00x smaller)
    ...
    """

    precision: str
    mode: str = ""
    method: str = ""
    per_channel: bool = True
    bytes_before: int = 0
    bytes_after: int = 0
    layers: list[LayerChoice] = field(default_factory=list)
    backend: str = ""
    rows: int = 0
    top1_agreement: float | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    batch: int = 0
    fp32_ms: float | None = None
    reduced_ms: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def size_ratio(self) -> float:
        """``bytes_before / bytes_after``: how many times smaller the saved weights are.

        Examples
        --------
        >>> CompressionReport("bf16", bytes_before=10, bytes_after=10).size_ratio
        1.0
        """
        return self.bytes_before / self.bytes_after if self.bytes_after else 1.0

    @property
    def throughput_ratio(self) -> float | None:
        """``fp32_ms / reduced_ms``: above 1 the reduced model is faster (None: not timed).

        Examples
        --------
        >>> CompressionReport("int8", fp32_ms=3.0, reduced_ms=2.0).throughput_ratio
        1.5
        """
        if not self.fp32_ms or not self.reduced_ms:
            return None
        return self.fp32_ms / self.reduced_ms

    def __str__(self) -> str:
        what = [self.mode] if self.mode else []
        if self.method:
            what.append(f"{self.method} calibration")
        if self.precision == "int8":
            what.append("per-channel weights" if self.per_channel else "per-tensor weights")
        lines = [f"precision  {self.precision}" + (f" ({', '.join(what)})" if what else "")
                 + (f" on {self.backend}" if self.backend else "")]
        lines.append(f"size       {_kb(self.bytes_before)} -> {_kb(self.bytes_after)} "
                     f"({self.size_ratio:.2f}x smaller)")
        if self.rows:
            acc = [f"top-1 agreement {self.top1_agreement:.2%}"] \
                if self.top1_agreement is not None else []
            if self.cosine_mean is not None:
                acc.append(f"cosine mean {self.cosine_mean:.5f}, min {self.cosine_min:.5f}")
            lines.append(f"accuracy   {'; '.join(acc)} over {self.rows} held-out rows")
            lines.append(f"error      max {self.max_abs_error:.3g}, mean "
                         f"{self.mean_abs_error:.3g} (abs, vs fp32)")
        else:
            lines.append("accuracy   not evaluated (taskflow.precision.evaluate)")
        if self.throughput_ratio is not None:
            lines.append(f"speed      {self.throughput_ratio:.2f}x fp32 ({self.reduced_ms:.3f} ms "
                         f"vs {self.fp32_ms:.3f} ms per batch of {self.batch})")
        if self.layers:
            kept = sum(c.precision != "fp32" for c in self.layers)
            lines.append(f"layers     {kept} of {len(self.layers)} run {self.precision}")
            rows = [("layer", "op", "shapes", "fp32 ms", f"{self.precision} ms", "speedup",
                     "runs")]
            for c in self.layers:
                rows.append((c.name, c.op, " * ".join("x".join(map(str, s)) for s in c.shapes),
                             _ms(c.fp32_ms), _ms(c.reduced_ms),
                             f"{c.speedup:.2f}x" if c.speedup else "-", c.precision))
            widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
            for r in rows:
                lines.append("  " + "  ".join(
                    cell.ljust(w) if k < 3 else cell.rjust(w)
                    for k, (cell, w) in enumerate(zip(r, widths))).rstrip())
        lines += [f"note       {n}" for n in self.notes]
        return "\n".join(lines)


def _kb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _ms(t: float | None) -> str:
    return "-" if t is None else f"{t:.4f}"


def weight_bytes(graph: Graph) -> int:
    """Bytes of every initializer of ``graph``: the weights as :meth:`Model.save` writes them.

    Examples
    --------
    >>> from taskflow.frontend import nn
    >>> weight_bytes(nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_graph())
    60
    """
    return int(sum(np.asarray(w).nbytes for w in graph.initializers.values()))


def as_feed(model: Model, data: Any, input_name: str | None = None, what: str = "data"
            ) -> dict[str, Any]:
    """``data`` (an array, or a dict of input name to array) as a feed of ``model``'s inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.frontend import nn
    >>> model = nn.Sequential([nn.Dense(4, 3)], input_shape=(4,)).to_model()
    >>> list(as_feed(model, np.zeros((2, 4), np.float32)))
    ['input']
    """
    names = model.graph.input_names
    if isinstance(data, Mapping):
        unknown = [k for k in data if k not in names]
        if unknown:
            raise InputError(f"{what} names unknown input(s) {unknown}; the model's inputs are "
                             f"{names}")
        return dict(data)
    if input_name is None:
        if len(names) != 1:
            raise InputError(f"{what} is one array but the model has inputs {names}; give a dict "
                             "{input name: array} or input_name=")
        input_name = names[0]
    if input_name not in names:
        raise InputError(f"input_name {input_name!r} is not an input of the model; its inputs "
                         f"are {names}")
    return {input_name: data}


def evaluate(reference_model: Model, model: Model, data: Any, *, batch_size: int = 64,
             repeat: int = 3, report: CompressionReport | None = None) -> CompressionReport:
    """Compare ``model`` with the fp32 ``reference_model`` on held-out ``data``.

    Accuracy is measured on the first output, over all rows of ``data`` (run in batches of
    ``batch_size``): top-1 agreement (argmax over the last axis), cosine similarity per row,
    max and mean absolute error. Speed: both models run the first batch alternately
    ``repeat`` times after a warm-up; the best time of each counts.

    Parameters
    ----------
    reference_model : Model
        The fp32 model.
    model : Model
        The reduced one (from :meth:`Model.with_precision` or :meth:`Model.quantize`).
    data : array or dict of str to array
        Held-out rows (not the calibration data): one array for a one-input model.
    batch_size : int
        Rows per run, and of the timed batch.
    repeat : int
        Timed runs per model.
    report : CompressionReport, optional
        The report to fill in (a copy of it; default: ``model.precision_report``, else a new
        one).

    Returns
    -------
    CompressionReport
        ``model.precision_report`` (when it has one) with accuracy and speed filled in.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.demo import load_digits, load_digits_model
    >>> images, labels, test_idx = load_digits()
    >>> x = (images[test_idx] / 16).astype(np.float32)
    >>> fp32 = load_digits_model()
    >>> report = evaluate(fp32, fp32.with_precision("bf16", choose="all"), x)
    >>> report.rows, report.top1_agreement > 0.99
    (450, True)
    """
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size!r}: expected an integer >= 1")
    feed = {k: np.asarray(v) for k, v in as_feed(reference_model, data, what="data").items()}
    rows = {len(v) for v in feed.values()}
    if len(rows) != 1 or 0 in rows:
        raise InputError(f"evaluation data has row counts {sorted(rows)}; expected one count "
                         "> 0 for every input")
    n = rows.pop()
    out = reference_model.graph.output_names[0]
    ref, got = [], []
    for k in range(0, n, batch_size):
        part = {name: v[k:k + batch_size] for name, v in feed.items()}
        ref.append(reference_model.run([out], part)[0])
        got.append(model.run([out], part)[0])
    a = np.concatenate(ref).astype(np.float64)
    b = np.concatenate(got).astype(np.float64)
    report = report if report is not None else getattr(model, "precision_report", None)
    if report is None:
        report = CompressionReport("fp32", bytes_before=weight_bytes(reference_model.source_graph),
                                   bytes_after=weight_bytes(model.source_graph))
    report = replace(report, notes=list(report.notes))
    report.rows = n
    err = np.abs(a - b)
    report.max_abs_error, report.mean_abs_error = float(err.max()), float(err.mean())
    if a.ndim >= 1 and a.shape[-1] > 1:
        report.top1_agreement = float(np.mean(a.argmax(-1) == b.argmax(-1)))
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    norms = np.linalg.norm(flat_a, axis=1) * np.linalg.norm(flat_b, axis=1)
    dots = np.einsum("ij,ij->i", flat_a, flat_b)
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0),
                   np.all(flat_a == flat_b, axis=1).astype(np.float64))
    report.cosine_mean, report.cosine_min = float(cos.mean()), float(cos.min())
    first = {name: v[:batch_size] for name, v in feed.items()}
    report.batch = len(next(iter(first.values())))
    report.fp32_ms, report.reduced_ms = (t * 1e3 for t in _race_models(
        reference_model, model, first, repeat))
    return report


def _race_models(a: Model, b: Model, feed: Mapping[str, Any],
                 repeat: int) -> tuple[float, float]:
    for m in (a, b):
        m.run(None, feed)  # warm-up
    best = [math.inf, math.inf]
    for _ in range(max(1, repeat)):
        for k, m in enumerate((a, b)):
            t0 = time.perf_counter()
            m.run(None, feed)
            best[k] = min(best[k], time.perf_counter() - t0)
    return best[0], best[1]
