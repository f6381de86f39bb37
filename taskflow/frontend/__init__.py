"""Frontend: models into the graph IR and back out.

ONNX import (:mod:`~taskflow.frontend.onnx_import`) with its opset adapters
(:mod:`~taskflow.frontend.opsets`) and batch handling (:mod:`~taskflow.frontend.batch`), ONNX
export (:mod:`~taskflow.frontend.onnx_export`), and the Python layer builder
(:mod:`~taskflow.frontend.nn`: ``from taskflow.frontend import nn``). Depends on ``taskflow.ir``
and ``taskflow.ops`` only (``Sequential.to_model`` imports ``taskflow.model`` when called).
"""
