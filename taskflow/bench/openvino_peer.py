"""OpenVINO as a benchmark peer of ``taskflow bench`` (never a runtime dependency).

OpenVINO is the fastest CPU engine the team has measured (issue 13 names it the anchor); on a
CPU with AMX its default precision is bf16, so it is run twice: ``openvino`` in fp32
(``INFERENCE_PRECISION_HINT=f32``, the like-for-like peer) and ``openvino-default`` with the
precision it picks for this CPU, which is what its users get.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def openvino_runner(model: Any, threads: int, *, precision: str | None = "f32"
                    ) -> Callable[[Any], Any] | None:
    """A call running ``model``'s source graph in OpenVINO on ``threads`` threads; None when
    OpenVINO is not installed or cannot compile the graph.

    Examples
    --------
    >>> run = openvino_runner(tf.load("m.onnx"), threads=2)       # doctest: +SKIP
    >>> run({"input": x})[0].shape                              # doctest: +SKIP
    (32, 1000)
    """
    try:
        import openvino as ov
    except ImportError:
        return None
    from taskflow.frontend.onnx_export import to_onnx

    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                              "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(to_onnx(model.source_graph)
                                                      .SerializeToString()), "CPU", config)
    except RuntimeError:
        return None
    request = compiled.create_infer_request()
    names = [p.get_any_name() for p in compiled.inputs]

    def run(x: Any) -> list[np.ndarray]:
        feed = x if isinstance(x, dict) else {names[0]: x}
        result = request.infer(feed)
        return [np.asarray(result[out]) for out in compiled.outputs]

    return run
