"""PairTokenizer against the Hugging Face tokenizer call CrossEncoder.predict makes."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from tests.tiny_models import minilm_folder
from triton_embeddings.triton_models.pair_tokenize import PairTokenizer

PAIRS = [
    ("hello", "world"),
    ("a short query", "a long document " * 80),
    ("a long query " * 80, "a short document"),
    ("long query " * 70, "long document " * 90),
    ("Wo liegt München?", "東京は日本の首都です。 naïve café 🚀"),
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    return AutoTokenizer.from_pretrained(minilm_folder())


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory, hf_tokenizer) -> str:
    path = tmp_path_factory.mktemp("pair_tok") / "tokenizer.json"
    hf_tokenizer.backend_tokenizer.save(str(path))
    return str(path)


@pytest.mark.parametrize("strategy", ["longest_first", "only_second"])
def test_pairs_match_the_hugging_face_tokenizer(tokenizer_file, hf_tokenizer, strategy):
    pairs = PAIRS if strategy == "longest_first" else [p for p in PAIRS if len(p[0]) < 100]
    tok = PairTokenizer(tokenizer_file, 64, truncation=strategy)
    enc = tok.pairs([q for q, _ in pairs], [d for _, d in pairs])
    ref = hf_tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=strategy, max_length=64,
                       padding="longest", return_tensors="np")
    width = ref["input_ids"].shape[1]
    assert enc.input_ids.shape[1] >= width  # padded to a bucket, never shorter
    np.testing.assert_array_equal(enc.input_ids[:, :width], ref["input_ids"])
    np.testing.assert_array_equal(enc.attention_mask[:, :width], ref["attention_mask"])
    np.testing.assert_array_equal(enc.token_type_ids[:, :width], ref["token_type_ids"])
    assert enc.attention_mask[:, width:].sum() == 0
    np.testing.assert_array_equal(enc.token_count[:, 0], ref["attention_mask"].sum(1))


def test_longest_first_cuts_the_long_document_and_keeps_a_short_query(tokenizer_file):
    tok = PairTokenizer(tokenizer_file, 32)
    (enc,) = tok.encode_pairs(["where is the station"], ["the station is near the river " * 20])
    assert len(enc.ids) == 32 and bool(enc.overflowing)
    query_ids = [i for i, t in zip(enc.ids, enc.type_ids) if t == 0]
    assert len(query_ids) == 6  # [CLS] where is the station [SEP]: untouched
    short = tok.pairs(["hi"], ["short"])
    assert not short.truncated.any()


def test_only_second_refuses_a_query_that_cannot_fit(tokenizer_file):
    tok = PairTokenizer(tokenizer_file, 16, truncation="only_second")
    with pytest.raises(ValueError, match="cannot truncate"):
        tok.pairs(["word " * 40], ["d"])


def test_bad_arguments(tokenizer_file):
    with pytest.raises(ValueError, match="truncation"):
        PairTokenizer(tokenizer_file, 16, truncation="only_first")
    with pytest.raises(ValueError, match="queries"):
        PairTokenizer(tokenizer_file, 16).pairs(["q"], ["a", "b"])
