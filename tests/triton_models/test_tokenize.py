"""The served tokenizer follows sentence-transformers, not the tokenizer.json defaults."""

import json

import numpy as np
import pytest

from triton_embeddings.triton_models.tokenize import TextTokenizer, bucket_length


@pytest.mark.parametrize(
    ("length", "expected"), [(0, 8), (1, 8), (8, 8), (9, 16), (64, 64), (65, 80), (129, 160), (257, 320)]
)
def test_bucket_length(length, expected):
    assert bucket_length(length, 512) == expected


def test_bucket_never_exceeds_max_length():
    assert bucket_length(250, 256) == 256
    assert bucket_length(255, 200) == 200


def test_bucket_padding_is_bounded_past_32_tokens():
    assert max(bucket_length(n, 4096) / n for n in range(32, 4000)) <= 1.25


@pytest.fixture(scope="module")
def tokenizer_json(default_model_source):
    return f"{default_model_source}/tokenizer.json"


def test_tokenizer_json_itself_truncates_at_128(tokenizer_json):
    # The trap this module exists for: the file's own truncation is shorter than the model's 256.
    assert json.load(open(tokenizer_json))["truncation"]["max_length"] == 128


def test_long_text_follows_sentence_transformers_max_length(tokenizer_json, st_model):
    text = "embeddings " * 400
    enc = TextTokenizer(tokenizer_json, st_model.max_seq_length)([text])
    reference = st_model.tokenize([text])["input_ids"][0].tolist()
    assert len(reference) == 256
    assert enc.token_count[0, 0] == 256
    assert enc.input_ids[0, :256].tolist() == reference
    assert enc.truncated[0, 0]


def test_ids_mask_and_counts_match_sentence_transformers(tokenizer_json, st_model):
    texts = ["hello world", "Über den Wolken 🚀", "...", "a " * 150]
    enc = TextTokenizer(tokenizer_json, st_model.max_seq_length)(texts)
    ref = st_model.tokenize(texts)
    for i, _ in enumerate(texts):
        real = int(ref["attention_mask"][i].sum())
        assert enc.token_count[i, 0] == real
        assert enc.input_ids[i, :real].tolist() == ref["input_ids"][i, :real].tolist()
        assert enc.attention_mask[i].sum() == real
    assert enc.input_ids.shape[1] == bucket_length(int(enc.token_count.max()), 256)
    assert not enc.truncated.any()
    assert enc.input_ids.dtype == np.int64 and enc.token_count.dtype == np.int32


def test_prompt_is_prepended(tokenizer_json):
    plain = TextTokenizer(tokenizer_json, 256)(["what is triton"])
    prompted = TextTokenizer(tokenizer_json, 256, prompt="query: ")(["what is triton"])
    assert prompted.token_count[0, 0] == plain.token_count[0, 0] + 2  # "query" ":"
