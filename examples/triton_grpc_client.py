"""Call the Triton ensemble directly over gRPC (the contract in docs/contract.md).

    python examples/triton_grpc_client.py --url localhost:8001 "first text" "second text"

Tensor names come from `triton_embeddings.contract` (install the package, or run from the checkout).
"""

import argparse

import numpy as np
import tritonclient.grpc as grpcclient

from triton_embeddings.contract import EMBEDDING, TEXT, TOKEN_COUNT
from triton_embeddings.defaults import DEFAULT_MODEL


def embed(client: grpcclient.InferenceServerClient, model: str, texts: list[str]):
    """Return (embeddings [N, D] float32, token counts [N]) for up to the model's max_batch_size texts."""
    text = grpcclient.InferInput(TEXT, [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_))
    outputs = [grpcclient.InferRequestedOutput(EMBEDDING), grpcclient.InferRequestedOutput(TOKEN_COUNT)]
    result = client.infer(model, inputs=[text], outputs=outputs)
    return result.as_numpy(EMBEDDING), result.as_numpy(TOKEN_COUNT)[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="localhost:8001", help="Triton gRPC address")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="ensemble name")
    args = parser.parse_args()
    with grpcclient.InferenceServerClient(args.url) as client:
        embeddings, tokens = embed(client, args.model, args.texts)
    for text, vector, n in zip(args.texts, embeddings, tokens):
        print(f"{n:4d} tokens  dim {vector.shape[0]}  [{vector[0]:+.4f} {vector[1]:+.4f} ...]  {text[:40]!r}")


if __name__ == "__main__":
    main()
