"""The floor under any path through Triton: one client, one short text, the encoder step alone.

The direct path's only Triton hop is a gRPC call to the embedded encoder (a Python-backend step) with token
ids. Timed here without the gateway: tokenized beforehand, the same sync gRPC call in a loop. What it costs
over the raw in-process encoder is what the Python backend's hop (gRPC, the stub's shared-memory IPC, the
step's own Python) adds, which no change to the gateway can remove.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from triton_embeddings import contract


def _route(client, repository: Path, model: str):
    """The direct path's route for `model`, built from the configs Triton serves (as the gateway builds it)."""
    from triton_embeddings.gateway.backends.direct import route_from_configs

    names = [model, *contract.step_names(model)[:2]]  # ensemble, tokenizer, encoder
    ensemble, tokenizer, encoder = (client.get_model_config(n, as_json=True)["config"] for n in names)
    return route_from_configs(repository, ensemble, encoder, tokenizer)


def encoder_hop_ms(grpc_url: str, repository: Path, model: str, texts: list[str]) -> float | None:
    """p50 of one gRPC call to the encoder step per text (tokenized beforehand), after 10 warm-up calls; None
    when the model has no direct route (the ensemble serves it)."""
    from tritonclient.grpc import InferenceServerClient, InferRequestedOutput

    client = InferenceServerClient(grpc_url)
    try:
        if (route := _route(client, repository, model)) is None:
            return None
        outputs = [InferRequestedOutput(contract.EMBEDDING)]
        feeds = [route.infer_inputs(route.encode([t])) for t in texts]
        samples = []
        for k, inputs in enumerate(feeds[:10] + feeds):
            t0 = time.perf_counter()
            client.infer(route.encoder, inputs, outputs=outputs)
            if k >= 10:
                samples.append((time.perf_counter() - t0) * 1000)
        return statistics.median(samples)
    finally:
        client.close()
