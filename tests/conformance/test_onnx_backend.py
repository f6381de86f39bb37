"""ONNX's own conformance suite (``onnx.backend.test.BackendTest``) run against taskflow.

Every node test case, the nine ``light/`` model zoo models (kind "real") and the ``simple``,
``pytorch-converted`` and ``pytorch-operator`` model data shipped inside the onnx package.

Nothing is skipped silently: a case is skipped only when
- its model uses an op outside taskflow's op set (the reason names the ops), or
- it matches an entry of ``KNOWN_GAPS`` below (each with its reason).
Anything else that fails is a real failure. The pass counts are in the README.
"""

from __future__ import annotations

import os
import re
import tempfile
import unittest

import onnx.backend.test

from taskflow import ops
from taskflow.backend import TaskflowBackend
from taskflow.errors import UnsupportedOpError

# The light-model cases write their dummy inputs under $ONNX_HOME: keep that out of $HOME.
os.environ.setdefault("ONNX_HOME", os.path.join(tempfile.gettempdir(), "taskflow-onnx-home"))

#: Cases in taskflow's op set that it does not pass, as regex -> reason. Keep this short.
KNOWN_GAPS: dict[str, str] = {
    r"_training_mode_|^test_training_dropout":
        "training mode (BatchNormalization/Dropout): taskflow runs inference only",
    r"^test_cast(like)?_.*_to_(INT4|UINT4|INT2|UINT2|FLOAT4E2M1|FLOAT8E8M0)":
        "casting *to* sub-byte or e8m0 types is not supported (int8 is the smallest type "
        "taskflow produces; casts from them work)",
    r"^test_identity_(opt|sequence)_":
        "optional and sequence values: taskflow's IR carries tensors only",
    r"^test_maxpool_with_argmax_":
        "MaxPool's second output (Indices) is not implemented; inference graphs do not use it",
    r"^test_resize_.*_antialias_":
        "Resize with antialias=1 is not implemented (nearest/linear/cubic without it are)",
    r"^test_if_":
        "If whose condition is a graph input: taskflow inlines an If at import only when its "
        "condition constant-folds (test_if_seq/_opt also return sequences/optionals)",
    r"^test_attention_4d_causal_fp16_expanded_":
        "float16 rounded after every op of the expanded graph differs by 2 ulp (4.9e-4) from "
        "the expected output, computed in float32 end to end; rtol=1e-3 is below 2 fp16 ulp",
}


def _gap_reason(test_name: str) -> str | None:
    for pattern, reason in KNOWN_GAPS.items():
        if re.search(pattern, test_name):
            return reason
    return None


class ConformanceBackend(TaskflowBackend):
    """Turns 'op outside our set' into a skip that names the ops; everything else must pass."""

    @classmethod
    def prepare(cls, model, device="CPU", **kwargs):
        try:
            return super().prepare(model, device, **kwargs)
        except UnsupportedOpError as exc:
            outside = sorted({op for op, _ in exc.ops if ops.lookup(op) is None})
            inside = sorted({op for op, _ in exc.ops if ops.lookup(op) is not None})
            if outside and not inside:
                raise unittest.SkipTest(f"op(s) outside taskflow's op set: {outside}") from exc
            raise


backend_test = onnx.backend.test.BackendTest(ConformanceBackend, __name__)
_cases = backend_test.test_cases

for _case in _cases.values():
    for _name in dir(_case):
        if not _name.startswith("test_"):
            continue
        if _name.endswith("_cuda"):
            # Each case is generated once per device; this in-process backend is the CPU one,
            # so the CUDA copies could only skip. GPU kernels are tested in tests/ops.
            delattr(_case, _name)
            continue
        _reason = _gap_reason(_name)
        if _reason:
            setattr(_case, _name, unittest.skip(f"known gap: {_reason}")(getattr(_case, _name)))

globals().update(_cases)
del _case, _name, _reason
