"""`embeddings-reembed`: stream a JSONL corpus through an embeddings endpoint at full throughput into a
JSONL of {"id", "embedding"} lines; resumable after an interruption or a failure, with a progress bar.

Progress lives in OUTPUT.checkpoint: a header naming the endpoint and model (a resume with another model
is refused: vectors of two models cannot share an index), then one line per written batch with its ids and
the output's size after it. A resume cuts the output back to the last checkpointed size, so a batch torn
by a crash is embedded again, never duplicated."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import openai
from tqdm import tqdm

from triton_embeddings.compare.client import MAX_INPUTS, ClientOptions, RetryCounter, call, make_client, token_bound
from triton_embeddings.compare.corpus import CorpusError, jsonl_records, record_id, record_text
from triton_embeddings.compare.endpoint import Endpoint


class ResumeError(RuntimeError):
    """The output and its checkpoint do not belong to this job."""


@dataclass
class Checkpoint:
    """Done ids and the output size they end at; appends one line per batch."""

    path: Path
    done: set[str]
    offset: int

    @classmethod
    def open(cls, path: Path, header: dict, output: Path) -> Checkpoint:
        if not path.exists():
            if output.exists() and output.stat().st_size:
                raise ResumeError(f"{output} exists without {path.name}: remove it or choose another --output")
            path.write_text(json.dumps(header) + "\n")
            output.write_bytes(b"")
            return cls(path, set(), 0)
        if not output.exists():
            raise ResumeError(f"{path} exists but {output} does not: remove {path.name} to start over")
        lines = path.read_text(encoding="utf-8").splitlines()
        if json.loads(lines[0]) != header:
            raise ResumeError(f"{path} belongs to another job ({lines[0]}); this one is {json.dumps(header)}")
        done, offset = set(), 0
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # torn last line: that batch is redone
            done.update(entry["ids"])
            offset = entry["offset"]
        with output.open("r+b") as f:
            f.truncate(offset)
        return cls(path, done, offset)

    def commit(self, ids: list[str], offset: int) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"offset": offset, "ids": ids}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done.update(ids)
        self.offset = offset


def pending(path: Path, text_field: str, id_field: str | None, done: set[str],
            keep: list[str]) -> Iterator[tuple[str, str, dict]]:
    """(id, text, kept fields) of every record not yet done, in file order."""
    for n, (line_no, record) in enumerate(jsonl_records(path)):
        rid = record_id(record, id_field, n)
        if rid not in done:
            yield rid, record_text(record, text_field, None, f"{path}:{line_no}"), {k: record.get(k) for k in keep}


def grouped(items: Iterator[tuple[str, str, dict]], size: int, max_tokens: int) -> Iterator[list]:
    group, budget = [], 0
    for item in items:
        cost = token_bound(item[1])
        if group and (len(group) >= size or budget + cost > max_tokens):
            yield group
            group, budget = [], 0
        group.append(item)
        budget += cost
    if group:
        yield group


@dataclass
class Totals:
    texts: int = 0
    tokens: int = 0


def write_batch(out, checkpoint: Checkpoint, group: list, vectors, totals: Totals, tokens: int) -> None:
    """Append the batch's lines, make them durable, then checkpoint them (in that order)."""
    lines = [json.dumps({"id": rid, "embedding": v.tolist(), **kept}) + "\n"
             for (rid, _, kept), v in zip(group, vectors)]
    out.write("".join(lines).encode("utf-8"))
    out.flush()
    os.fsync(out.fileno())
    checkpoint.commit([rid for rid, _, _ in group], out.tell())
    totals.texts += len(group)
    totals.tokens += tokens


def run(endpoint: Endpoint, source: Path, output: Path, options: ClientOptions, text_field: str = "text",
        id_field: str | None = None, keep: list[str] | None = None) -> Totals:
    """Embed every record of `source` not yet in `output`; returns what this run added."""
    header = {"base_url": endpoint.base_url, "model": endpoint.model, "dimensions": endpoint.dimensions}
    checkpoint = Checkpoint.open(Path(f"{output}.checkpoint"), header, output)
    total = sum(1 for _ in jsonl_records(source))
    client = make_client(endpoint, options, RetryCounter())
    totals = Totals()
    groups = grouped(pending(source, text_field, id_field, checkpoint.done, keep or []),
                     min(options.batch_size, MAX_INPUTS), options.max_batch_tokens)
    with output.open("ab") as out, ThreadPoolExecutor(options.concurrency) as pool, \
            tqdm(total=total, initial=len(checkpoint.done), unit="text", disable=not options.progress) as bar:
        in_flight: dict = {}
        try:
            for group in groups:
                while len(in_flight) >= options.concurrency:
                    _finish(in_flight, out, checkpoint, totals, bar)
                in_flight[pool.submit(call, client, endpoint, [t for _, t, _ in group], options.max_retries)] = group
            while in_flight:
                _finish(in_flight, out, checkpoint, totals, bar)
        finally:
            for future in in_flight:
                future.cancel()
            client.close()
    return totals


def _finish(in_flight: dict, out, checkpoint: Checkpoint, totals: Totals, bar) -> None:
    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
    for future in done:
        group = in_flight.pop(future)
        vectors, tokens, _ = future.result()
        write_batch(out, checkpoint, group, vectors, totals, tokens)
        bar.update(len(group))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embeddings-reembed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, required=True, help="JSONL corpus")
    p.add_argument("--output", type=Path, required=True, help="JSONL of {id, embedding} (appended on resume)")
    p.add_argument("--url", required=True, help="OpenAI-compatible base URL, e.g. http://localhost:8080/v1")
    p.add_argument("--model", required=True, help="model name (one model per output: vectors do not mix)")
    p.add_argument("--key-env", help="environment variable holding the API key")
    p.add_argument("--dimensions", type=int, help="ask for N dimensions")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text")
    p.add_argument("--id-field", help="JSONL field holding the id (default _id or id, else the line position)")
    p.add_argument("--keep", default="", help="comma-separated input fields copied to each output line")
    p.add_argument("--batch-size", type=int, default=256, help=f"inputs per request (at most {MAX_INPUTS})")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--max-retries", type=int, default=8, help="retries of a 429/5xx/timeout (honours Retry-After)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    endpoint = Endpoint("reembed", args.url, args.model, args.key_env, args.dimensions)
    options = ClientOptions(batch_size=args.batch_size, concurrency=args.concurrency, max_retries=args.max_retries,
                            timeout_s=args.timeout, progress=not args.no_progress)
    start = time.perf_counter()
    try:
        totals = run(endpoint, args.input, args.output, options, args.text_field, args.id_field,
                     [k for k in args.keep.split(",") if k])
    except (ResumeError, CorpusError, ValueError, OSError) as e:
        print(f"embeddings-reembed: error: {e}", file=sys.stderr)
        return 2
    except openai.APIError as e:
        print(f"embeddings-reembed: error: the endpoint answered {type(e).__name__}: {e.message}; "
              "what was written is kept: run the same command again to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("embeddings-reembed: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - start
    print(f"embedded {totals.texts} texts ({totals.tokens} tokens) in {seconds:.1f}s "
          f"({totals.texts / max(seconds, 1e-9):.1f} texts/s) into {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
