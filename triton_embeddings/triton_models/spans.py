"""Token-level cuts of one untruncated encoding: keep the end (truncation START) or split into windows.

Plain module (no Triton): the tokenizer step and the unit tests import it. An encoding is laid out as
[leading special tokens][prompt tokens][text tokens][trailing special tokens]; both cuts keep the
special tokens and the prompt, and cut only the text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Tokens:
    """The parts of a `tokenizers.Encoding` that padding needs."""

    ids: list[int]
    type_ids: list[int]
    overflowing: bool


@dataclass(frozen=True)
class Layout:
    """Where the text tokens of an encoding start and end."""

    text_start: int  # first text token (after leading specials and prompt tokens)
    text_end: int  # one past the last text token (trailing specials follow)
    length: int

    @property
    def fixed(self) -> int:
        """Tokens every cut keeps: specials and prompt."""
        return self.text_start + (self.length - self.text_end)


def layout(encoding, prompt_chars: int) -> Layout:
    """Locate the text tokens; a token starting inside the first `prompt_chars` characters is prompt."""
    special, offsets, n = encoding.special_tokens_mask, encoding.offsets, len(encoding.ids)
    start = 0
    while start < n and special[start]:
        start += 1
    end = n
    while end > start and special[end - 1]:
        end -= 1
    while start < end and offsets[start][0] < prompt_chars:
        start += 1
    return Layout(start, end, n)


def keep_end(encoding, prompt_chars: int, max_length: int) -> Tokens:
    """Truncate from the start of the text (keep its end), keeping specials and prompt."""
    ids, types = list(encoding.ids), list(encoding.type_ids)
    if len(ids) <= max_length:
        return Tokens(ids, types, False)
    lay = layout(encoding, prompt_chars)
    keep = max(max_length - lay.fixed, 0)
    if keep == 0:  # the prompt alone fills the window: cut from the end like sentence-transformers
        return Tokens(ids[: max_length - 1] + ids[-1:], types[: max_length - 1] + types[-1:], True)
    index = list(range(lay.text_start)) + list(range(lay.text_end - keep, len(ids)))
    return Tokens([ids[i] for i in index], [types[i] for i in index], True)


def _word_start(word_ids: list, i: int, floor: int) -> int:
    """Move `i` back to the first token of its word (not below `floor + 1`)."""
    j = i
    while j > floor + 1 and word_ids[j] is not None and word_ids[j] == word_ids[j - 1]:
        j -= 1
    return j


def windows(encoding, prompt_chars: int, max_length: int, overlap_ratio: float = 0.125) -> list[tuple[int, int, int]]:
    """Overlapping windows over the text as (start char, end char, tokens), chars relative to the text.

    Each window holds at most `max_length` tokens once specials and prompt are added back; windows end
    at word boundaries where a word fits, and overlap by `overlap_ratio` of the window.
    """
    lay = layout(encoding, prompt_chars)
    offsets, word_ids = encoding.offsets, encoding.word_ids
    if lay.length <= max_length or lay.text_end <= lay.text_start:
        end_char = offsets[lay.text_end - 1][1] - prompt_chars if lay.text_end > lay.text_start else 0
        return [(0, max(end_char, 0), min(lay.length, max_length))]
    budget = max(max_length - lay.fixed, 1)
    overlap = int(budget * overlap_ratio)
    out, a = [], lay.text_start
    while True:
        b = min(a + budget, lay.text_end)
        if b < lay.text_end:
            b = _word_start(word_ids, b, a)
        out.append((offsets[a][0] - prompt_chars, offsets[b - 1][1] - prompt_chars, lay.fixed + b - a))
        if b >= lay.text_end:
            return out
        a = _word_start(word_ids, max(b - overlap, a + 1), a)
