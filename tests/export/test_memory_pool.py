"""Triton's CUDA memory pool computed from exported configs: the formula by hand, rerank ensembles, the CLI."""

from __future__ import annotations

from pathlib import Path

from triton_embeddings.export import memory_pool as mp
from triton_embeddings.export import triton_config as tc
from triton_embeddings.export.cross_encoder import RerankSpec
from triton_embeddings.export.kinds.embedding import configs
from triton_embeddings.export.kinds.rerank import rerank_configs
from triton_embeddings.export.model_spec import ModelSpec
from triton_embeddings.export.options import ExportOptions

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def _embedding(name: str, length: int, hidden: int, token_types: bool, **options) -> dict[str, dict]:
    spec = ModelSpec(source=f"org/{name}", max_seq_length=length, pooling_mode="mean", normalize=True,
                     dimension=hidden, prompts={}, default_prompt_name=None)
    written = configs(ExportOptions(name=name, target="gpu", **options), spec, token_types, hidden, "0" * 64)
    return {n: tc.as_json(cfg) for n, cfg in written.items()}


def test_one_ensemble_by_hand():
    """mpnet's shape: 64 rows of 384 tokens, hidden 768, no token_type_ids."""
    models = _embedding("mpnet", 384, 768, False)
    ids_and_mask = 2 * 64 * 384 * 8  # int64, from the tokenizer
    counts = 64 * 4 + 64 * 1  # TOKEN_COUNT int32, TRUNCATED bool
    hidden_states = 64 * 384 * 768 * 4  # the encoder's fp32 last_hidden_state: 75.5 MB, over Triton's 64 MiB
    embedding = 64 * 768 * 4
    assert mp.ensemble_bytes(models["mpnet"], models) == ids_and_mask + counts + hidden_states + embedding
    assert hidden_states > 64 * MIB
    # x2 headroom = 152 MB, rounded up to 64 MiB multiples: 192 MiB.
    assert mp.pool_bytes(models) == 192 * MIB


def test_ensembles_add_up_and_the_pool_never_goes_under_the_default():
    small = _embedding("small", 16, 32, True, max_batch_size=4)
    assert mp.pool_bytes(small) == 64 * MIB
    both = {**_embedding("mpnet", 384, 768, False), **_embedding("minilm", 256, 384, True)}
    needed = mp.HEADROOM * sum(mp.ensemble_bytes(both[n], both) for n in ("mpnet", "minilm"))
    assert mp.pool_bytes(both) == 256 * MIB and 192 * MIB < needed <= 256 * MIB


def test_rerank_ensembles_count_their_pairs():
    spec = RerankSpec(source="org/r", max_seq_length=512, activation="sigmoid", pad_id=0, truncation="longest_first")
    written = rerank_configs(ExportOptions(name="r", target="gpu"), spec, True, "0" * 64)
    models = {n: tc.as_json(cfg) for n, cfg in written.items()}
    pairs = 3 * 64 * 512 * 8 + 64 * 4 + 64 * 1  # ids, mask, token types; TOKEN_COUNT, TRUNCATED
    scores = 3 * 64 * 4  # logits, then SCORE and LOGIT
    assert mp.ensemble_bytes(models["r"], models) == pairs + scores


def test_cli_reads_an_exported_repository(capsys):
    repository = ROOT / "model_repository"
    assert mp.main([str(repository)]) == 0
    read = mp.repository_configs(repository)
    assert capsys.readouterr().out.strip() == f"--cuda-memory-pool-byte-size=0:{mp.pool_bytes(read)}"
    assert mp.ensemble_bytes(read["all-MiniLM-L6-v2"], read) == 3 * 64 * 256 * 8 + 64 * 5 + 64 * 256 * 384 * 4 \
        + 64 * 384 * 4
    assert mp.main([str(repository / "missing")]) == 2
