"""The serving pipeline: one template for every task (admission, cache, single-flight, batcher, backend)."""
