"""Benchmark scripts; ``benchmarks.models`` builds and exports the real-model ONNX files."""
