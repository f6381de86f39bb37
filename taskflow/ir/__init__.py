"""Graph IR: the graph (:mod:`~taskflow.ir.graph`), constant folding
(:mod:`~taskflow.ir.fold`), the optimisation passes (:mod:`~taskflow.ir.optimize`) and output
placement into Concat buffers (:mod:`~taskflow.ir.placement`). Depends on ``taskflow.ops``
and ``taskflow.errors`` only.
"""
