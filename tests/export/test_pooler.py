"""The generated pooling ONNX model against sentence-transformers' own Pooling/Normalize modules."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from triton_embeddings.export.pooler import build_pooler

try:
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling
except ImportError:  # pragma: no cover
    from sentence_transformers.models import Normalize, Pooling


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens"])
@pytest.mark.parametrize("normalize", [True, False])
def test_pooler_matches_sentence_transformers(mode, normalize):
    rng = np.random.default_rng(1)
    hidden = 16
    emb = rng.normal(size=(4, 7, hidden)).astype(np.float32)
    mask = np.zeros((4, 7), dtype=np.int64)
    for i, n in enumerate([7, 3, 1, 5]):
        mask[i, :n] = 1
    emb[mask == 0] = 1e3  # padding garbage must not leak into the result

    model = build_pooler(mode, normalize, hidden)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"TOKEN_EMBEDDINGS": emb, "ATTENTION_MASK": mask})

    features = {"token_embeddings": torch.from_numpy(emb), "attention_mask": torch.from_numpy(mask)}
    features = Pooling(hidden, pooling_mode=mode)(features)
    if normalize:
        features = Normalize()(features)
    np.testing.assert_allclose(got, features["sentence_embedding"].numpy(), rtol=1e-5, atol=1e-5)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        build_pooler("weightedmean", True, 8)
