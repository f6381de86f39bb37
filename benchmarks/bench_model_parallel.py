"""Model parallelism where it is needed: a layer too big for one worker's memory limit.

A single Gemm whose weight (``--weight-mib``, default 1000 MiB) is larger than each worker's
memory limit (``--worker-mib``, default 1200 MiB, i.e. ~1140 MiB before the nanny kills it)
runs on a 2-worker LocalCluster. (At 800 MiB even the split run dies: a worker briefly holds
two copies of its 500 MiB block while deserialising it.)

- data mode replicates the weight to every worker: each worker must hold all of it, goes past
  its limit and is restarted by the nanny until the job is given up;
- model mode splits the Gemm along its output features: each worker holds half the weight.

Prints whether each mode finished, its time, and the error against an in-process numpy
product. Run: ``python benchmarks/bench_model_parallel.py``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import taskflow as tf


def big_gemm_model(in_features: int, out_features: int, seed: int = 0) -> tf.Model:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_features, in_features), dtype=np.float32)
    w *= np.float32(1 / np.sqrt(in_features))
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], name="huge_fc", transB=1)], "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_features])],
        initializer=[numpy_helper.from_array(w, "w")])
    return tf.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def attempt(model: tf.Model, x: np.ndarray, mode: str, worker_mib: int,
            timeout: float) -> tuple[str, float, np.ndarray | None]:
    import dask.array as da
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           memory_limit=f"{worker_mib}MiB", dashboard_address=None)
    client = Client(cluster)
    start = time.perf_counter()
    try:
        lazy = model.predict(da.from_array(x, chunks=(len(x) // 2, -1)), mode=mode,
                             client=client)
        y = client.compute(lazy).result(timeout=timeout)
        return "finished", time.perf_counter() - start, np.asarray(y)
    except Exception as exc:  # the failure is the result we report
        return f"failed: {type(exc).__name__}: {str(exc)[:120]}", \
            time.perf_counter() - start, None
    finally:
        client.close()
        cluster.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weight-mib", type=int, default=1000)
    parser.add_argument("--worker-mib", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()
    in_features = 8192
    out_features = args.weight_mib * 2**20 // (4 * in_features)
    model = big_gemm_model(in_features, out_features)
    x = np.random.default_rng(1).standard_normal((args.batch, in_features), dtype=np.float32)
    expected = x @ model.graph.initializers[model.graph.nodes[0].inputs[1]].T
    print(f"Gemm {in_features}x{out_features}: weight {args.weight_mib} MiB; "
          f"2 workers x {args.worker_mib} MiB memory limit")
    for mode in ("model", "data"):
        status, seconds, y = attempt(model, x, mode, args.worker_mib, args.timeout)
        err = "" if y is None else \
            f", max rel error {np.abs(y - expected).max() / np.abs(expected).max():.1e}"
        print(f"  {mode:5s} mode: {status} in {seconds:.1f} s{err}")


if __name__ == "__main__":
    main()
