"""``taskflow bench``: taskflow timed beside its peers (:mod:`~taskflow.bench.harness`), and a
PyTorch module built from a taskflow graph as one of those peers
(:mod:`~taskflow.bench.torch_peer`)."""
