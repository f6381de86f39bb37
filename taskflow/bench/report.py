"""The table of a benchmark suite (:mod:`~taskflow.bench.suite`): rows, geometric means, issue
13's targets, and the JSON record.

Every ratio is a throughput ratio from the same run: the peer's median time over taskflow's
(above 1: taskflow is faster). GFLOP/s is taskflow's, from the model's FLOP count at the timed
sizes and taskflow's median time; its share is of the measured sgemm peak.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from taskflow.bench.harness import SETTLE_S, BenchResult
from taskflow.bench.peak import SgemmPeak

#: Issue 13's targets: every model at least this fast as ONNX Runtime ...
TARGET_EACH = 0.8
#: ... and the geometric mean of taskflow/ORT over the models at least this.
TARGET_GEOMEAN = 1.2
#: Column headings of the peers.
SHORT = {"onnxruntime": "ORT", "openvino": "OV", "openvino-default": "OV-def", "torch": "torch"}


@dataclass
class SuiteRow:
    """One model: its :class:`BenchResult`, or the reason it has none (``problem``)."""

    model: str
    batch: int
    result: BenchResult | None = None
    problem: str = ""

    def ms(self, runner: str = "taskflow") -> float | None:
        """Median milliseconds per batch of ``runner`` (None: it did not run)."""
        times = self.result.times.get(runner) if self.result else None
        return statistics.median(times) * 1e3 if times else None

    def ratio(self, peer: str) -> float | None:
        """taskflow's throughput over ``peer``'s: ``ms(peer) / ms("taskflow")``."""
        return self.result.ratio(peer) if self.result else None

    @property
    def size(self) -> str:
        """``"32"``, or ``"32x128"`` with a sequence."""
        dims = self.result.dims if self.result else {}
        return "x".join(str(n) for n in (self.batch, *dims.values()))

    @property
    def gflops(self) -> float | None:
        ms = self.ms()
        if not ms or not self.result.flops_per_image:
            return None
        return self.result.flops_per_image * self.batch / ms / 1e6

    def summary(self) -> str:
        """One line for progress output."""
        if self.result is None:
            return f"{self.model}: {self.problem}"
        vs = ", ".join(
            f"{r:.2f}x {SHORT.get(p, p)}"
            for p in self.result.images_per_s
            if p != "taskflow" and (r := self.ratio(p)) is not None
        )
        return f"{self.model} batch {self.size}: taskflow {self.ms():.1f} ms ({vs})"


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


@dataclass
class SuiteResult:
    """All rows of one run, with the machine they ran on."""

    rows: list[SuiteRow]
    threads: int
    repeat: int
    peak: SgemmPeak
    cpu: str
    peers: list[str] = field(default_factory=list)
    #: Every sgemm peak sample of the run (GFLOP/s); ``peak`` is the best.
    peak_samples: list[float] = field(default_factory=list)

    def ratios(self, peer: str = "onnxruntime") -> list[float]:
        return [r for row in self.rows if (r := row.ratio(peer)) is not None]

    def geomean(self, peer: str = "onnxruntime") -> float | None:
        """Geometric mean of taskflow/``peer`` over the models that ran in both."""
        return geomean(self.ratios(peer))

    def targets(self) -> list[tuple[bool, str]]:
        """(met, line) for each of issue 13's targets against ONNX Runtime."""
        ratios = self.ratios()
        slow = [
            f"{row.model} {r:.2f}x"
            for row in self.rows
            if (r := row.ratio("onnxruntime")) is not None and r < TARGET_EACH
        ]
        gm = self.geomean()
        return [
            (
                bool(ratios) and not slow,
                f"every model >= {TARGET_EACH}x ORT: {len(ratios) - len(slow)}/{len(ratios)}"
                + (f" (below: {', '.join(slow)})" if slow else ""),
            ),
            (
                gm is not None and gm >= TARGET_GEOMEAN,
                f"geomean taskflow/ORT >= {TARGET_GEOMEAN}x: "
                + (f"{gm:.2f}x over {len(ratios)} models" if gm else "no model ran"),
            ),
        ]

    def table(self) -> str:
        peers = [p for p in self.peers if p != "onnxruntime"]
        head = (
            f"{'model':30s} {'batch':>7s} {'taskflow ms':>11s} {'ORT ms':>9s} "
            f"{'tf/ORT':>7s} "
            + " ".join(f"{'tf/' + SHORT.get(p, p):>8s}" for p in peers)
            + f" {'GFLOP/s':>8s} {'% peak':>6s}"
        )
        lines = [
            f"taskflow bench: {len(self.rows)} models, {self.threads} kernel thread(s) for "
            f"taskflow and every peer, medians of {self.repeat} interleaved runs, each after "
            f"{SETTLE_S:g} s of untimed ones (steady state); ratios "
            f"are peer time / taskflow time (above 1: taskflow faster)",
            f"machine: {self.cpu}; measured sgemm peak {self.peak}, best of "
            f"{len(self.peak_samples) or 1} sample(s) over the run",
            "",
            head,
            "-" * len(head),
        ]
        notes = []

        def cell(v: float | None, fmt: str, width: int, unit: str = "") -> str:
            text = f"{v:{fmt}}{unit}" if v is not None else "-"
            return f"{text:>{width}s}"

        for row in self.rows:
            if row.result is None:
                lines.append(f"{row.model:30s} {row.batch:>7d}  {row.problem}")
                continue
            share = (
                row.gflops / self.peak.gflops * 100 if row.gflops and self.peak.gflops else None
            )
            ort, ort_ratio = row.ms("onnxruntime"), row.ratio("onnxruntime")
            lines.append(
                f"{row.model:30s} {row.size:>7s} {cell(row.ms(), '.1f', 11)} "
                f"{cell(ort, '.1f', 9)} {cell(ort_ratio, '.2f', 7, 'x')} "
                + " ".join(cell(row.ratio(p), ".2f", 8, "x") for p in peers)
                + f" {cell(row.gflops, '.1f', 8)} {cell(share, '.0f', 6, '%')}"
            )
            notes += [f"  {row.model}: {s}" for s in row.result.skipped]
        lines.append("")
        for peer in ("onnxruntime", *peers):
            gm, n = self.geomean(peer), len(self.ratios(peer))
            if gm is not None:
                lines.append(
                    f"geomean taskflow/{SHORT.get(peer, peer)}: {gm:.2f}x over {n} models"
                )
        lines += [f"{'PASS' if ok else 'FAIL'}  {text}" for ok, text in self.targets()]
        if "torch" in peers:
            lines.append(
                "tf/torch: an export's own nn.Module, eager; a light model's graph run "
                "op by op in torch.nn.functional"
            )
        if notes:
            lines += ["peers skipped:", *notes]
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """The run as plain data, for ``--json``."""
        rows = []
        for row in self.rows:
            r = row.result
            rows.append(
                {
                    "model": row.model,
                    "batch": row.batch,
                    "problem": row.problem or None,
                    "dims": r.dims if r else {},
                    "flops_per_sample": r.flops_per_image if r else None,
                    "median_ms": {k: row.ms(k) for k in r.times} if r else {},
                    "times_s": dict(r.times) if r else {},
                    "ratio_vs": {p: row.ratio(p) for p in r.times if p != "taskflow"} if r else {},
                    "gflops": row.gflops,
                    "peak_share": row.gflops / self.peak.gflops if row.gflops else None,
                    "peers_skipped": list(r.skipped) if r else [],
                }
            )
        return {
            "machine": self.cpu,
            "threads": self.threads,
            "repeat": self.repeat,
            "sgemm_peak_gflops": self.peak.gflops,
            "sgemm_peak_how": self.peak.how,
            "sgemm_peak_samples": self.peak_samples,
            "geomean_vs": {p: self.geomean(p) for p in self.peers},
            "targets": [{"met": ok, "text": text} for ok, text in self.targets()],
            "rows": rows,
        }
