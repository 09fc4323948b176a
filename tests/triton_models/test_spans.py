"""Truncation side and windows, on all-MiniLM-L6-v2's tokenizer (WordPiece, [CLS] ... [SEP])."""

import pytest
from tokenizers import Tokenizer

from triton_embeddings.triton_models import spans
from triton_embeddings.triton_models.tokenize import TextTokenizer

LONG = " ".join(f"word{i} is here" for i in range(60))


@pytest.fixture(scope="module")
def tokenizer_json(default_model_source):
    return f"{default_model_source}/tokenizer.json"


@pytest.fixture(scope="module")
def whole(tokenizer_json):
    tok = Tokenizer.from_file(tokenizer_json)
    tok.no_truncation()
    tok.no_padding()
    return tok


def test_keep_end_keeps_specials_prompt_and_the_end_of_the_text(whole):
    prompt = "query: "
    enc = whole.encode(prompt + LONG)
    cut = spans.keep_end(enc, len(prompt), 16)
    assert cut.overflowing and len(cut.ids) == 16
    prompt_ids = whole.encode(prompt, add_special_tokens=False).ids
    assert cut.ids[0] == enc.ids[0] and cut.ids[-1] == enc.ids[-1]  # [CLS] ... [SEP]
    assert cut.ids[1 : 1 + len(prompt_ids)] == prompt_ids
    assert cut.ids[1 + len(prompt_ids) : -1] == enc.ids[-(16 - 2 - len(prompt_ids)) - 1 : -1]


def test_keep_end_leaves_short_inputs_alone(whole):
    enc = whole.encode("short text")
    cut = spans.keep_end(enc, 0, 16)
    assert cut.ids == enc.ids and not cut.overflowing


def test_tokenizer_start_side_differs_from_end_only_for_long_inputs(tokenizer_json):
    tok = TextTokenizer(tokenizer_json, 16)
    end, start = tok.encode([LONG, "hi"], sides=["END", "START"]), tok.encode([LONG, "hi"], sides=["START", "START"])
    assert end[0].ids[:5] == tok.encode([LONG])[0].ids[:5]
    assert start[0].ids != end[0].ids and len(start[0].ids) == 16
    assert start[1].ids == end[1].ids


@pytest.mark.parametrize("prompt", ["", "query: "])
def test_windows_fit_cover_and_overlap(whole, tokenizer_json, prompt):
    tok = TextTokenizer(tokenizer_json, 24)
    (rows,) = tok.windows([LONG], [prompt])
    assert len(rows) > 3
    for a, b, k in rows:  # re-tokenized alone (with the prompt) each window fits, and says how many tokens
        ids = whole.encode(prompt + LONG[a:b]).ids
        assert len(ids) == k <= 24
    assert rows[0][0] == 0 and rows[-1][1] == len(LONG)
    assert all(rows[i + 1][0] < rows[i][1] for i in range(len(rows) - 1))  # overlapping
    assert all(LONG[a:b] == LONG[a:b].strip() for a, b, _ in rows)  # cut at word boundaries


def test_a_short_input_is_one_window(tokenizer_json):
    tok = TextTokenizer(tokenizer_json, 24)
    assert tok.windows(["hello world"]) == [[(0, 11, 4)]]
