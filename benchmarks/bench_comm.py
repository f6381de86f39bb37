"""Compressing activations between workers: Dask's comm compression off, lz4 or zstd.

In the pipeline and model modes activations cross workers between stages (issue 15). Dask can
compress what it sends (config ``distributed.comm.compression``), but only between peers on
different hosts: ``Comm.same_host`` turns it off whatever the config says when both ends share
an IP. On an ordinary ``LocalCluster`` every codec therefore moves the same raw bytes. So the
workers here listen on their own loopback IPs (127.0.0.2 and .3, a "different host" to Dask),
over two links, and a third for reference:

- **loopback**: straight to each other (the fastest link there is: what compressing costs);
- **slow**: every worker advertises (``contact_address``) a throttled TCP proxy in front of
  it, run by this module in its own process: ``--mbit`` per direction per worker (default
  100 Mbit/s) and ``--delay-ms`` one-way latency (default 2 ms). Traffic to a worker, from
  the scheduler, the client and the other worker, goes through it (``tc netem`` is not
  available on this kernel);
- **one-ip** (only when named): every peer on 127.0.0.1, as in taskflow's embedded cluster.
  Every codec moves the same raw bytes there, so its timings show the machine's noise.

Two cases (``--cases``), built with ``taskflow.frontend.nn``: ``cnn``, a 4-conv CNN on 64x64
images in pipeline mode (2 stages, one per worker), and ``gemm``, a 2048 -> 8192 Dense + ReLU
in model mode (its weight split over both workers), then 8192 -> 16. Per link the three codecs
run on three clusters (scheduler here, 2 worker processes x 1 thread x 1 kernel thread each),
alive together so that runs interleave in rotated order; each cluster is warmed up first
(weights scattered, kernels compiled) and the input persisted on the first worker. ``--quick``
(the tests) runs tiny models once, with the workers as threads, one codec's cluster at a time.

Per run: seconds (``predict`` + result); the bytes that crossed between workers as Dask sized
them (``raw``) and as they went on the wire (``wire``), both from each worker's
``transfer_outgoing_log`` (worker-to-worker entries only); ``ratio`` = raw / wire; ``proxied``
= bytes the proxies carried (all traffic). Dask sends a frame compressed only where 5 random
10 kB samples and then the whole frame shrink to 70% or less: ReLU outputs (~half zeros) do
(zstd's 1.9x ~95% of the time, lz4's 1.55x ~70%), pooled ones and random inputs do not. The
codecs' own speed and ratio on one chunk of the crossing activation, compressed here, come
first, with the link speed below which each pays when nothing overlaps. Times are the best
and the median of ``--repeats``; ``speed-up`` = best time(off) / best time(codec), above 1 the
codec is faster (other work on a shared machine only ever adds time). Outputs are checked equal
across codecs.

    python benchmarks/bench_comm.py [--cases cnn gemm] [--links loopback slow one-ip]
        [--repeats 5] [--mbit 100] [--delay-ms 2] [--quick]

A full run takes 3-5 minutes on 2 busy cores (mostly starting 6 worker processes per link);
one link and one case at a time stays under about 2.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import dataclasses
import multiprocessing
import socket
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np

from taskflow.dask.threads import KERNEL_ENV_VARS
from taskflow.frontend import nn

CODECS: tuple[str | None, ...] = (None, "lz4", "zstd")
#: "one-ip" (not run by default) is an ordinary LocalCluster's link: every peer on 127.0.0.1.
LINKS = ("loopback", "slow", "one-ip")
#: The scheduler and client stay on 127.0.0.1; worker i listens on WORKER_IP.format(2 + i) and
#: its proxy on WORKER_IP.format(12 + i): distinct IPs, so Dask does not skip compression.
WORKER_IP = "127.0.0.{}"
#: Bytes the proxy reads at a time: a 100 Mbit/s link moves 64 KiB in 5 ms, fine enough.
PROXY_READ = 64 << 10
#: Chunks queued per direction of a connection before the proxy stops reading (backpressure).
PROXY_QUEUE = 32


# --- the cases ----------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    model: Any
    x: np.ndarray
    chunk: int
    mode: str
    options: dict[str, Any] = field(default_factory=dict)
    #: the model's first layers, up to the value that crosses workers (for :func:`codec_speeds`)
    boundary: Any = None


def cnn_case(images: int, chunk: int, size: int = 64) -> Case:
    layers = [
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Flatten(),
        nn.Dense(64, 10)]
    x = np.random.default_rng(0).standard_normal((images, 3, size, size), dtype=np.float32)
    # 2 stages of equal FLOPs: the cut falls after the second conv's ReLU (checked by the
    # bytes moved: 32 x size^2 x 4 per image)
    boundary = nn.Sequential(layers[:4], input_shape=(3, size, size)).to_model()
    return Case("cnn (pipeline)", nn.Sequential(layers, input_shape=(3, size, size),
                                                name="cnn").to_model(),
                x, chunk, "pipeline", boundary=boundary)


def gemm_case(rows: int, chunk: int, width: int = 8192) -> Case:
    layers = [nn.Dense(2048, width), nn.ReLU(), nn.Dense(width, 16)]
    x = np.random.default_rng(1).standard_normal((rows, 2048), dtype=np.float32)
    # split the wide layer (8 MiB x width/1024 of weights), not the small last one; its blocks
    # (with the ReLU) cross to the worker that runs the last layer
    return Case("gemm (model)", nn.Sequential(layers, input_shape=(2048,)).to_model(),
                x, chunk, "model", {"split_bytes": 4 * 2048 * width},
                boundary=nn.Sequential(layers[:2], input_shape=(2048,)).to_model())


CASES: dict[str, Callable[[bool], Case]] = {
    "cnn": lambda quick: cnn_case(8, 4, 32) if quick else cnn_case(32, 8),
    "gemm": lambda quick: gemm_case(32, 16, 1024) if quick else gemm_case(256, 64),
}


# --- the slow link ------------------------------------------------------------------------------
class _Pacer:
    """One direction of a link: bytes leave one after another at ``rate`` bytes/s and arrive
    ``delay`` s later. Shared by every connection through that proxy in that direction."""

    def __init__(self, rate: float, delay: float) -> None:
        self.rate, self.delay, self.free_at = rate, delay, 0.0

    def arrival(self, nbytes: int) -> float:
        now = asyncio.get_running_loop().time()
        self.free_at = max(now, self.free_at) + nbytes / self.rate
        return self.free_at + self.delay


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pacer: _Pacer,
                counts: Any, slot: int) -> None:
    queue: asyncio.Queue = asyncio.Queue(PROXY_QUEUE)

    async def deliver() -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            await asyncio.sleep(max(0.0, item[0] - loop.time()))
            writer.write(item[1])
            await writer.drain()
            counts[slot] += len(item[1])
        writer.close()

    task = asyncio.create_task(deliver())
    try:
        while data := await reader.read(PROXY_READ):
            await queue.put((pacer.arrival(len(data)), data))
    except ConnectionError:
        pass
    finally:
        await queue.put(None)
        try:
            await task
        except ConnectionError:
            pass


async def _serve(routes: list[tuple[str, int, str, int]], rate: float, delay: float,
                 counts: Any, ready: Any) -> None:
    servers = []
    for i, (host, port, to_host, to_port) in enumerate(routes):
        inbound, outbound = _Pacer(rate, delay), _Pacer(rate, delay)

        async def handle(reader, writer, i=i, to=(to_host, to_port), pacers=(inbound, outbound)):
            try:
                up_reader, up_writer = await asyncio.open_connection(*to)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer, pacers[0], counts, 2 * i),
                                 _pipe(up_reader, writer, pacers[1], counts, 2 * i + 1))

        servers.append(await asyncio.start_server(handle, host, port))
    ready.set()
    await asyncio.Event().wait()


def serve_proxies(routes: list[tuple[str, int, str, int]], mbit: float, delay_ms: float,
                  counts: Any, ready: Any) -> None:
    """Process target: one throttled proxy per route ``(host, port, to_host, to_port)``;
    ``counts[2 i]`` / ``counts[2 i + 1]``: bytes route i carried to / from its target."""
    asyncio.run(_serve(routes, mbit * 1e6 / 8, delay_ms / 1e3, counts, ready))


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- clusters -----------------------------------------------------------------------------------
@dataclass
class Rig:
    """A 2-worker cluster whose workers (and this process) compress with ``codec``."""

    codec: str | None
    cluster: Any
    client: Any
    proxy_slots: tuple[int, ...] = ()

    def config(self) -> Any:
        return dask.config.set({"distributed.comm.compression": self.codec})

    @property
    def workers(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])


def start_rig(codec: str | None, routes: list[tuple[str, int, str, int]] | None,
              first_route: int = 0, processes: bool = True, one_ip: bool = False) -> Rig:
    """Scheduler here; 2 workers, in processes (``Nanny``) or as threads of this process, on
    their own IPs (on 127.0.0.1 with ``one_ip``), behind the proxies of ``routes`` if any."""
    from distributed import Client, Nanny, Scheduler, SpecCluster, Worker

    env = {**dict.fromkeys(KERNEL_ENV_VARS, "1"), "NUMBA_NUM_THREADS": "1"}
    workers = {}
    for i in range(2):
        host = "127.0.0.1" if one_ip else WORKER_IP.format(2 + i)
        options: dict[str, Any] = {"host": host, "nthreads": 1, "memory_limit": "3GiB",
                                   "dashboard_address": f"{host}:0"}
        if processes:
            options.update(env=env, silence_logs=40)
        if routes is not None:
            proxy, port, _, to_port = routes[first_route + i]
            options.update({"worker_port" if processes else "port": to_port,
                            "contact_address": f"tcp://{proxy}:{port}"})
        workers[i] = {"cls": Nanny if processes else Worker, "options": options}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False,
                                               "dashboard_address": "127.0.0.1:0"}}
    with dask.config.set({"distributed.comm.compression": codec}):
        cluster = SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40)
        client = Client(cluster)
        client.wait_for_workers(2)
    slots = () if routes is None else (first_route, first_route + 1)
    return Rig(codec, cluster, client, slots)


def _take_transfers(dask_worker: Any) -> list[dict[str, Any]]:
    log = [{"who": e["who"], "total": e["total"], "compressed": e["compressed"]}
           for e in dask_worker.transfer_outgoing_log]
    dask_worker.transfer_outgoing_log.clear()
    return log


@dataclass
class Sample:
    seconds: float
    raw: int  #: bytes between workers, as Dask sized them
    wire: int  #: the same transfers, as written to the comm
    proxied: int  #: bytes every proxy of the rig carried, both ways
    y: np.ndarray


def prepare(rig: Rig, case: Case) -> tuple[Case, Any]:
    """The case with its own copy of the model, and its input persisted on the first worker
    (where stage 0 runs); warmed up (weights placed, kernels compiled)."""
    case = dataclasses.replace(case, model=copy.copy(case.model))
    with rig.config():
        x = rig.client.persist(da.from_array(case.x, chunks=(case.chunk, *case.x.shape[1:])),
                               workers=rig.workers[:1])
        run_case(rig, case, x, counts=None)
    return case, x


def _proxied(rig: Rig, counts: Any) -> int:
    return 0 if counts is None else sum(counts[2 * s + d] for s in rig.proxy_slots
                                        for d in (0, 1))


def run_case(rig: Rig, case: Case, x: Any, counts: Any) -> Sample:
    client = rig.client
    with rig.config():
        client.run(_take_transfers)
        before = _proxied(rig, counts)
        start = time.perf_counter()
        lazy = case.model.predict(x, mode=case.mode, client=client, **case.options)
        y = np.asarray(client.compute(lazy).result())
        seconds = time.perf_counter() - start
        after = _proxied(rig, counts)
        logs = client.run(_take_transfers)
    workers = set(logs)
    between = [e for log in logs.values() for e in log if e["who"] in workers]
    return Sample(seconds, sum(e["total"] for e in between),
                  sum(e["compressed"] for e in between), after - before, y)


def measure(cases: list[Case], links: list[str], repeats: int, mbit: float, delay_ms: float,
            processes: bool = True) -> dict[tuple[str, str, str | None], list[Sample]]:
    """Every case x link x codec ``repeats`` times. With worker processes the codecs' clusters
    are alive together and runs interleave in rotated order; with worker threads (which share
    this process's config) one codec's cluster runs at a time."""
    out: dict[tuple[str, str, str | None], list[Sample]] = {}
    ctx = multiprocessing.get_context("spawn")
    groups = [CODECS] if processes else [(c,) for c in CODECS]
    for link in links:
        with ExitStack() as stack:
            routes, counts = None, None
            if link == "slow":
                routes = [(WORKER_IP.format(12 + i % 2), free_port(WORKER_IP.format(12 + i % 2)),
                           WORKER_IP.format(2 + i % 2), free_port(WORKER_IP.format(2 + i % 2)))
                          for i in range(2 * len(CODECS))]
                counts, ready = ctx.Array("q", 2 * len(routes), lock=False), ctx.Event()
                proxy = ctx.Process(target=serve_proxies, daemon=True,
                                    args=(routes, mbit, delay_ms, counts, ready))
                proxy.start()
                stack.callback(proxy.join, 5)
                stack.callback(proxy.terminate)
                if not ready.wait(60):
                    raise RuntimeError("the throttling proxy did not start in 60 s")
            for group in groups:
                with ExitStack() as alive:
                    if not processes:
                        alive.enter_context(dask.config.set(
                            {"distributed.comm.compression": group[0]}))
                    rigs = []
                    for codec in group:
                        rig = start_rig(codec, routes, 2 * CODECS.index(codec), processes,
                                        one_ip=link == "one-ip")
                        alive.callback(rig.cluster.close)
                        alive.callback(rig.client.close)
                        rigs.append(rig)
                    for case in cases:
                        # a model per cluster: a model keeps the weights it placed on one
                        ready_cases = [prepare(rig, case) for rig in rigs]
                        for r in range(repeats):
                            for k in np.roll(np.arange(len(rigs)), -r):
                                sample = run_case(rigs[k], *ready_cases[k], counts)
                                out.setdefault((case.name, link, rigs[k].codec),
                                               []).append(sample)
                        del ready_cases
    return out


# --- codec speed -------------------------------------------------------------------------------
@dataclass
class CodecSpeed:
    codec: str
    raw: int
    packed: int  #: compressed bytes (Dask would send it raw if over 70% of ``raw``)
    compress: float  #: raw bytes per second
    decompress: float  #: raw bytes per second

    @property
    def break_even_mbit(self) -> float:
        """Link speed below which compressing one chunk, sending it and decompressing it beats
        sending it raw (n/B > n/c + n/(rB) + n/d), with nothing overlapped."""
        saved = 1 - self.packed / self.raw
        return saved / (1 / self.compress + 1 / self.decompress) * 8 / 1e6


def codec_speeds(case: Case, tries: int = 5) -> list[CodecSpeed]:
    """Compress one chunk of the activation that crosses workers with Dask's own codecs in
    this process; best of ``tries``."""
    from distributed.protocol.compression import compressions

    a = np.ascontiguousarray(case.boundary.run(None, {"input": case.x[:case.chunk]})[0])
    out = []
    for codec in CODECS[1:]:
        comp = compressions[codec]
        c = d = np.inf
        for _ in range(tries):
            t = time.perf_counter()
            packed = comp.compress(a.data)
            c = min(c, time.perf_counter() - t)
            t = time.perf_counter()
            comp.decompress(packed)
            d = min(d, time.perf_counter() - t)
        out.append(CodecSpeed(codec, a.nbytes, len(packed), a.nbytes / c, a.nbytes / d))
    return out


def print_speeds(case: Case, speeds: list[CodecSpeed]) -> None:
    print(f"\n{case.name}: one chunk of the activation that crosses, "
          f"{mib(speeds[0].raw)} MiB, compressed here:")
    print(f"  {'codec':<6}{'ratio':>7}{'compress MB/s':>15}{'decompress MB/s':>17}"
          f"{'pays below Mbit/s':>19}")
    for s in speeds:
        print(f"  {s.codec:<6}{s.raw / s.packed:>6.2f}x{s.compress / 1e6:>15.0f}"
              f"{s.decompress / 1e6:>17.0f}{s.break_even_mbit:>19.0f}")


# --- report -------------------------------------------------------------------------------------
LINK_TITLES = {"loopback": "loopback, workers on their own IPs",
               "slow": "{mbit:g} Mbit/s + {delay_ms:g} ms per worker (proxy)",
               "one-ip": "loopback, every peer on 127.0.0.1 (Dask skips compression)"}


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def print_table(results: dict[tuple[str, str, str | None], list[Sample]], mbit: float,
                delay_ms: float) -> None:
    for name, link in dict.fromkeys((n, lk) for n, lk, _ in results):
        base = min(s.seconds for s in results[(name, link, None)])
        print(f"\n{name}, {LINK_TITLES[link].format(mbit=mbit, delay_ms=delay_ms)}:")
        print(f"  {'codec':<6}{'best s':>8}{'median s':>10}{'speed-up':>10}{'raw MiB':>9}"
              f"{'wire MiB':>10}{'ratio':>7}{'proxied MiB':>13}")
        for codec in CODECS:
            runs = results[(name, link, codec)]
            times = [s.seconds for s in runs]
            raw, wire = runs[-1].raw, runs[-1].wire
            proxied = mib(runs[-1].proxied) if link == "slow" else "-"
            print(f"  {str(codec):<6}{min(times):>8.2f}{statistics.median(times):>10.2f}"
                  f"{base / min(times):>9.2f}x{mib(raw):>9}{mib(wire):>10}"
                  f"{raw / max(wire, 1):>6.2f}x{proxied:>13}")


def check_outputs(results: dict[tuple[str, str, str | None], list[Sample]]) -> list[str]:
    """Cases x links whose outputs differ between codecs (compression is lossless)."""
    bad = []
    for (name, link, codec), runs in results.items():
        ref = results[(name, link, None)][0].y
        if not all(np.array_equal(s.y, ref) for s in runs):
            bad.append(f"{name} {link} {codec}")
    return bad


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["cnn", "gemm"])
    parser.add_argument("--links", nargs="+", choices=LINKS, default=list(LINKS[:2]))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mbit", type=float, default=100)
    parser.add_argument("--delay-ms", type=float, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="tiny models, 1 repeat, workers as threads (for the tests)")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    cases = [CASES[c](args.quick) for c in args.cases]
    for case in cases:
        print_speeds(case, codec_speeds(case))
    results = measure(cases, args.links, repeats, args.mbit, args.delay_ms,
                      processes=not args.quick)
    print_table(results, args.mbit, args.delay_ms)
    bad = check_outputs(results)
    print("\noutputs equal across codecs" if not bad else f"\noutputs DIFFER: {bad}")
    return results


if __name__ == "__main__":
    main()
