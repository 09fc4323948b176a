"""The size of Triton's CUDA memory pool (`--cuda-memory-pool-byte-size`), from the exported models' configs.

Triton keeps the tensors that ensemble steps hand each other in its CUDA memory pool, 64 MiB per GPU by
default; one that does not fit goes to pinned host memory and is copied back for the next step
(GPU -> host -> GPU). The pool this module computes (docs/deployment.md, "GPU memory pool"):

    per ensemble:  sum over the tensors its steps output (its intermediates and outputs) of
                   max_batch_size x dims (-1 = the ensemble's max_seq_length) x bytes per element
    pool        =  HEADROOM x the sum over the repository's ensembles (they run at the same time),
                   rounded up to a multiple of 64 MiB (so never under Triton's default)

`python -m triton_embeddings.export.memory_pool REPOSITORY` prints the flag for an exported repository.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from triton_embeddings import contract as c
from triton_embeddings.export import triton_config as tc

# Two batches of one ensemble at once: the one in the encoder and the one before it, still being pooled.
HEADROOM = 2
ROUND_TO = 64 << 20  # Triton's default pool
FLAG = "--cuda-memory-pool-byte-size"
_BYTES = {"TYPE_BOOL": 1, "TYPE_INT8": 1, "TYPE_UINT8": 1, "TYPE_FP16": 2, "TYPE_BF16": 2, "TYPE_INT16": 2,
          "TYPE_INT32": 4, "TYPE_FP32": 4, "TYPE_INT64": 8, "TYPE_FP64": 8}


def _max_seq_length(ensemble: dict) -> int:
    params = c.RerankParams if c.is_rerank_ensemble(ensemble) else c.EnsembleParams
    return params.from_config(ensemble).max_seq_length


def tensor_bytes(output: dict, rows: int, max_seq_length: int) -> int:
    """One step output at `rows` rows, every variable dimension at `max_seq_length`; strings stay on the host."""
    size = _BYTES.get(output.get("data_type", ""), 0)
    dims = [max_seq_length if int(d) < 0 else int(d) for d in output.get("dims", [])]
    return rows * size * math.prod(dims)


def ensemble_bytes(ensemble: dict, models: dict[str, dict]) -> int:
    """The tensors one ensemble's steps hand on, at its max batch and max length (configs in Triton's JSON form)."""
    rows, length = int(ensemble.get("max_batch_size", 1)), _max_seq_length(ensemble)
    total = 0
    for step in ensemble.get("ensemble_scheduling", {}).get("step", []):
        handed_on = set(step.get("output_map", {}))
        outputs = models[step["model_name"]].get("output", [])
        total += sum(tensor_bytes(o, rows, length) for o in outputs if o["name"] in handed_on)
    return total


def pool_bytes(models: dict[str, dict]) -> int:
    """The pool for every ensemble in `models` (a repository's configs by model name, Triton's JSON form)."""
    needed = HEADROOM * sum(ensemble_bytes(m, models) for m in models.values() if m.get("platform") == "ensemble")
    return max(1, math.ceil(needed / ROUND_TO)) * ROUND_TO


def repository_configs(repository: str | Path) -> dict[str, dict]:
    return {p.parent.name: tc.load(p) for p in sorted(Path(repository).glob("*/config.pbtxt"))}


def flag(pool: int, gpu: int = 0) -> str:
    return f"{FLAG}={gpu}:{pool}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m triton_embeddings.export.memory_pool REPOSITORY", file=sys.stderr)
        return 2
    print(flag(pool_bytes(repository_configs(args[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
