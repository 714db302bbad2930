"""Benchmarks: accuracy parity of every exported form against PyTorch, and latency."""
