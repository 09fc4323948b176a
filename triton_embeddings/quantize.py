"""Integer and binary embeddings: calibration at export, quantization in the gateway (numpy only).

The formulas are sentence-transformers' `quantize_embeddings`:
- int8/uint8: per-dimension ranges [lo, hi] cut into 256 steps, `floor((x - lo) / step)` clipped to
  0..255 (int8: minus 128). The ranges are calibrated once, at export, so the same text always gives
  the same bytes whatever else is in the batch (sentence-transformers' default, ranges from the batch
  itself, does not).
- binary/ubinary: the sign bits (`x > 0`) packed 8 per byte, first dimension in the high bit
  (`numpy.packbits`); binary is the packed byte minus 128 as int8.

With `dimensions` the gateway truncates and renormalizes first; the calibrated ranges are then scaled
by 1 / (typical norm of the first `d` dimensions), also calibrated, so they fit the renormalized values.
"""

from __future__ import annotations

import numpy as np

EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")
INTEGER_TYPES = ("int8", "uint8")
BIT_TYPES = ("binary", "ubinary")
DTYPES = {"float": "<f4", "int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}


def _round(values: np.ndarray) -> list[float]:
    return [float(f"{v:.6g}") for v in np.asarray(values, dtype=np.float64)]


def calibrate(vectors: np.ndarray) -> dict[str, list[float]]:
    """Ranges to store with a model, from its embeddings of a calibration text set ([n, D], n >= 2)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise ValueError("calibration needs at least two embeddings")
    prefix = np.sqrt(np.cumsum(vectors.astype(np.float64) ** 2, axis=1))  # [n, D]: norm of the first d dims
    return {
        "min": _round(vectors.min(axis=0)),
        "max": _round(vectors.max(axis=0)),
        "prefix_norm": _round(np.median(prefix, axis=0)),
    }


def ranges_for(calibration: dict, dimensions: int, renormalized: bool) -> np.ndarray:
    """The [2, d] ranges for vectors of `dimensions` dims (renormalized after truncation or not)."""
    lo = np.asarray(calibration["min"][:dimensions], dtype=np.float32)
    hi = np.asarray(calibration["max"][:dimensions], dtype=np.float32)
    if renormalized:
        norm = float(calibration["prefix_norm"][dimensions - 1])
        if norm > 0:
            lo, hi = lo / norm, hi / norm
    return np.vstack((lo, hi))


def quantize(vectors: np.ndarray, embedding_type: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Float rows [n, d] to `embedding_type` rows: [n, d] for the integer types, [n, ceil(d / 8)] for bits."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if embedding_type == "float":
        return np.ascontiguousarray(vectors, dtype="<f4")
    if embedding_type in BIT_TYPES:
        packed = np.packbits(vectors > 0, axis=-1).reshape(vectors.shape[0], -1)
        return packed if embedding_type == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    if embedding_type not in INTEGER_TYPES:
        raise ValueError(f"unknown embedding type {embedding_type!r}")
    if ranges is None:
        raise ValueError(f"{embedding_type} needs calibrated ranges")
    steps = (ranges[1] - ranges[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    levels = np.clip(np.floor((vectors - ranges[0]) / steps), 0, 255)
    return levels.astype(np.uint8) if embedding_type == "uint8" else (levels - 128).astype(np.int8)


def packed_length(dimensions: int, embedding_type: str) -> int:
    """Values per vector in the response: d, or ceil(d / 8) bytes for the bit types."""
    return -(-dimensions // 8) if embedding_type in BIT_TYPES else dimensions


def hamming_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - (differing bits / bits) between rows of packed ubinary vectors."""
    a, b = np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)
    differing = np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)
    return 1.0 - differing / (8 * a.shape[-1])
