"""The quantization math against sentence-transformers' quantize_embeddings."""

import numpy as np
import pytest
from sentence_transformers.quantization import quantize_embeddings

from triton_embeddings import quantize


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((200, 48)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_integer_types_match_sentence_transformers(vectors, kind):
    calibration = quantize.calibrate(vectors[:150])
    ranges = quantize.ranges_for(calibration, 48, renormalized=False)
    ours = quantize.quantize(vectors[150:], kind, ranges)
    theirs = quantize_embeddings(vectors[150:], precision=kind, ranges=ranges)
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


@pytest.mark.parametrize("kind", ["binary", "ubinary"])
def test_bit_types_match_sentence_transformers(vectors, kind):
    ours = quantize.quantize(vectors, kind)
    theirs = quantize_embeddings(vectors, precision=kind)
    assert ours.shape == (200, 6) and ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


def test_first_dimension_is_the_high_bit():
    v = np.zeros((1, 10), dtype=np.float32) - 1
    v[0, 0] = v[0, 9] = 1
    assert quantize.quantize(v, "ubinary").tolist() == [[0b10000000, 0b01000000]]
    assert quantize.packed_length(10, "ubinary") == 2 and quantize.packed_length(10, "int8") == 10


def test_same_vector_same_bytes_whatever_the_batch(vectors):
    ranges = quantize.ranges_for(quantize.calibrate(vectors), 48, renormalized=False)
    alone = quantize.quantize(vectors[:1], "int8", ranges)
    batched = quantize.quantize(vectors[:50], "int8", ranges)
    assert np.array_equal(alone[0], batched[0])


def test_renormalized_ranges_fit_truncated_vectors(vectors):
    calibration = quantize.calibrate(vectors)
    d = 12
    cut = vectors[:, :d] / np.linalg.norm(vectors[:, :d], axis=1, keepdims=True)
    ranges = quantize.ranges_for(calibration, d, renormalized=True)
    levels = quantize.quantize(cut, "uint8", ranges)
    assert levels.min() < 40 and levels.max() > 215  # the range is used, not squeezed into a corner
    assert np.mean((levels == 0) | (levels == 255)) < 0.05  # few values clipped


def test_int8_keeps_cosine_ranking(vectors):
    ranges = quantize.ranges_for(quantize.calibrate(vectors), 48, renormalized=False)
    q = quantize.quantize(vectors, "int8", ranges).astype(np.float32)
    exact, approx = vectors[0] @ vectors.T, (q[0] - q.mean(0)) @ (q - q.mean(0)).T
    assert np.corrcoef(exact, approx)[0, 1] > 0.95


def test_hamming_similarity():
    a = np.array([[0b11110000]], dtype=np.uint8)
    assert quantize.hamming_similarity(a, a)[0] == 1.0
    assert quantize.hamming_similarity(a, np.array([[0b00001111]], dtype=np.uint8))[0] == 0.0
    assert quantize.hamming_similarity(a, np.array([[0b11110011]], dtype=np.uint8))[0] == 0.75


def test_integer_types_need_ranges(vectors):
    with pytest.raises(ValueError):
        quantize.quantize(vectors, "int8")
    with pytest.raises(ValueError):
        quantize.calibrate(vectors[:1])
