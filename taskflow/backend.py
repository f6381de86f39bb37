"""taskflow as an ONNX backend (``onnx.backend.base.Backend``).

This is what lets ONNX's own conformance suite (``onnx.backend.test.BackendTest``) run against
taskflow, and lets tools written for ONNX backends use taskflow unchanged.

Examples
--------
>>> from taskflow.backend import TaskflowBackend                # doctest: +SKIP
>>> rep = TaskflowBackend.prepare(onnx.load("model.onnx"))       # doctest: +SKIP
>>> outputs = rep.run([x])                                       # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from taskflow.model import Model


class TaskflowRep(BackendRep):
    """A prepared model; ``run`` takes inputs positionally or by name."""

    def __init__(self, model: Model):
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        names = [i.name for i in self.model.get_inputs()]
        if isinstance(inputs, dict):
            feed = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            feed = dict(zip(names, inputs))
        return tuple(self.model.run(None, feed))


class TaskflowBackend(Backend):
    """ONNX backend running models with taskflow's kernels in-process (CPU)."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> TaskflowRep:
        from taskflow.frontend.onnx_import import load_onnx

        # Conformance data feeds the exact shapes the model declares: keep them fixed.
        graph = load_onnx(model, fix_batch=False)
        return TaskflowRep(Model(graph, device=kwargs.get("kernels", "cpu")))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU",
                  **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Sequence[Any], device: str = "CPU",
                 outputs_info: Any = None, **kwargs: Any) -> tuple[np.ndarray, ...]:
        from taskflow import ops

        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        return ops.get(node.op_type)(*inputs, **attrs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"
