"""The pooler's math in PyTorch, for the GPU engine: the same modes and results as the ONNX pooler
(`export/pooler.py`), computed where the hidden states are (on the GPU), in float32.

Importable without Triton; torch is imported by the caller's engine, not at this module's import.
"""

from __future__ import annotations


def _mean(hidden, mask3, sqrt_len: bool):
    count = mask3.sum(1).clamp(min=1e-9)
    return (hidden * mask3).sum(1) / (count.sqrt() if sqrt_len else count)


def _max(hidden, mask3):
    return (hidden + (1.0 - mask3) * -1e9).amax(1)  # padding gets -1e9 before the max, as in sentence-transformers


def _last_token(hidden, mask3):
    last = (mask3[..., 0].sum(1) - 1).clamp(min=0).long()  # right padding: the last position whose mask is 1
    return hidden.gather(1, last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)


# Every mode of export/pooler.py's POOLERS, by name (a mode without an entry is refused).
POOLERS = {
    "mean": lambda h, m: _mean(h, m, sqrt_len=False),
    "mean_sqrt_len_tokens": lambda h, m: _mean(h, m, sqrt_len=True),
    "cls": lambda h, m: h[:, 0],
    "max": _max,
    "lasttoken": _last_token,
}


def pool(hidden, attention_mask, mode: str, normalize: bool):
    """hidden [N, L, H] (any float dtype), attention_mask [N, L] -> [N, H] float32 on hidden's device."""
    if mode not in POOLERS:
        raise ValueError(f"unknown pooling mode {mode!r} (known: {sorted(POOLERS)})")
    hidden = hidden.float()
    mask3 = attention_mask.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
    pooled = POOLERS[mode](hidden, mask3)
    if normalize:
        pooled = pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return pooled
