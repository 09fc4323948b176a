"""Inference backends: the `Backend` protocol and its typed errors (base), Triton, upstream APIs, routing."""
