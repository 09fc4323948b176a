"""Reading texts (JSONL, CSV, one per line) and relevance labels (BEIR or TREC qrels)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ID_FIELDS = ("_id", "id")


class CorpusError(ValueError):
    """A corpus, query or qrels file cannot be read as asked; the message names the file and line."""


@dataclass(frozen=True)
class Texts:
    """Texts with their ids, in file order."""

    ids: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise CorpusError(f"{path}:{n}: expected a JSON object")
            yield n, record


def record_id(record: dict, id_field: str | None, fallback: int) -> str:
    """The record's id field (`_id` or `id` unless named), else its 0-based position."""
    for name in (id_field,) if id_field else ID_FIELDS:
        if name in record:
            return str(record[name])
    if id_field:
        raise CorpusError(f"record {fallback} has no id field {id_field!r}")
    return str(fallback)


def record_text(record: dict, text_field: str, title_field: str | None, where: str) -> str:
    """The text field, prefixed by the title (BEIR corpora) when one is named and present."""
    if not isinstance(record.get(text_field), str):
        raise CorpusError(f"{where}: no string field {text_field!r}")
    title = record.get(title_field) if title_field else None
    return f"{title} {record[text_field]}" if isinstance(title, str) and title else record[text_field]


def read_jsonl(path: Path, text_field: str, id_field: str | None, title_field: str | None) -> Texts:
    ids, texts = [], []
    for n, record in jsonl_records(path):
        ids.append(record_id(record, id_field, len(ids)))
        texts.append(record_text(record, text_field, title_field, f"{path}:{n}"))
    return Texts(ids, texts)


def read_csv(path: Path, column: str, id_field: str | None) -> Texts:
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if column not in (reader.fieldnames or []):
            raise CorpusError(f"{path}: no column {column!r} (columns: {reader.fieldnames})")
        rows = list(reader)
    ids = [record_id(r, id_field, i) for i, r in enumerate(rows)]
    return Texts(ids, [r[column] for r in rows])


def read_lines(path: Path) -> Texts:
    texts = [line.rstrip("\n") for line in path.open(encoding="utf-8")]
    texts = [t for t in texts if t.strip()]
    return Texts([str(i) for i in range(len(texts))], texts)


def read_texts(path: Path, text_field: str = "text", id_field: str | None = None,
               title_field: str | None = None) -> Texts:
    """Texts by file type: `.jsonl`/`.json` records, `.csv` with a header, anything else one text per line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        result = read_jsonl(path, text_field, id_field, title_field)
    elif suffix in (".csv", ".tsv"):
        result = read_csv(path, text_field, id_field)
    else:
        result = read_lines(path)
    if not result.texts:
        raise CorpusError(f"{path}: no texts")
    if len(set(result.ids)) != len(result.ids):
        raise CorpusError(f"{path}: ids are not unique")
    return result


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Relevance labels {query id: {doc id: grade}} from BEIR TSV (`query-id corpus-id score`, header
    optional) or TREC (`qid 0 docid grade`) files."""
    qrels: dict[str, dict[str, int]] = {}
    for n, line in enumerate(Path(path).open(encoding="utf-8"), 1):
        parts = line.split()
        if not parts or (n == 1 and not parts[-1].lstrip("-").isdigit()):
            continue  # blank line or BEIR's header
        if len(parts) == 3:
            qid, did, grade = parts
        elif len(parts) == 4:
            qid, _, did, grade = parts
        else:
            raise CorpusError(f"{path}:{n}: expected 3 (BEIR) or 4 (TREC) columns")
        try:
            qrels.setdefault(qid, {})[did] = int(grade)
        except ValueError:
            raise CorpusError(f"{path}:{n}: grade {grade!r} is not an integer") from None
    if not qrels:
        raise CorpusError(f"{path}: no labels")
    return qrels
