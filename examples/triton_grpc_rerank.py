"""Call a rerank ensemble directly over gRPC (the rerank contract in docs/contract.md).

    python examples/triton_grpc_rerank.py --url localhost:8001 --model tiny-reranker "query" "doc one" "doc two"
"""

import argparse

import numpy as np
import tritonclient.grpc as grpcclient

from triton_embeddings import contract


def rerank(client: grpcclient.InferenceServerClient, model: str, query: str, documents: list[str]):
    """Return (scores [N], raw logits [N], token counts [N]) for up to the model's max_batch_size documents."""
    def column(name: str, values: list[str]) -> grpcclient.InferInput:
        tensor = grpcclient.InferInput(name, [len(values), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[v.encode("utf-8")] for v in values], dtype=np.object_))
        return tensor

    inputs = [column(contract.QUERY, [query] * len(documents)), column(contract.DOCUMENT, documents)]
    names = (contract.SCORE, contract.LOGIT, contract.TOKEN_COUNT)
    result = client.infer(model, inputs=inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in names])
    return tuple(result.as_numpy(n)[:, 0] for n in names)


def is_reranker(client: grpcclient.InferenceServerClient, model: str) -> bool:
    """Tell a rerank ensemble from an embedding one by its parameters."""
    config = client.get_model_config(model, as_json=True)["config"]
    return contract.is_rerank_ensemble(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query")
    parser.add_argument("documents", nargs="+")
    parser.add_argument("--url", default="localhost:8001", help="Triton gRPC address")
    parser.add_argument("--model", default="tiny-reranker", help="rerank ensemble name")
    args = parser.parse_args()
    with grpcclient.InferenceServerClient(args.url) as client:
        if not is_reranker(client, args.model):
            parser.error(f"{args.model} is not a rerank ensemble")
        scores, logits, tokens = rerank(client, args.model, args.query, args.documents)
    for i in np.argsort(-scores):
        print(f"{scores[i]:.4f}  (logit {logits[i]:+.3f}, {tokens[i]} tokens)  {args.documents[i][:60]!r}")


if __name__ == "__main__":
    main()
