"""`embeddings-compare`: A/B quality, speed and cost of two or more OpenAI-compatible embedding endpoints on
your own corpus. The first endpoint (--a) is the reference the others are compared with."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import openai

from triton_embeddings.compare import report
from triton_embeddings.compare.cache import VectorCache
from triton_embeddings.compare.client import MAX_INPUTS, MAX_TOKENS, ClientOptions
from triton_embeddings.compare.corpus import CorpusError
from triton_embeddings.compare.endpoint import Endpoint, parse_spec
from triton_embeddings.compare.run import Pricing, compare, load_inputs

LABELS = "abcdefgh"
DEFAULT_CACHE = Path.home() / ".cache" / "triton-embeddings" / "compare.sqlite"


def _endpoint_options(p: argparse.ArgumentParser) -> None:
    for n, x in enumerate(LABELS):
        shown = n < 2  # --c ... --h work the same way; listed once in the epilog
        hide = argparse.SUPPRESS
        p.add_argument(f"--{x}", metavar="URL:MODEL", help=f"endpoint {x.upper()}, e.g. "
                       "https://api.openai.com/v1:text-embedding-3-small" if shown else hide)
        p.add_argument(f"--{x}-key-env", metavar="VAR",
                       help=f"environment variable holding endpoint {x.upper()}'s API key" if shown else hide)
        p.add_argument(f"--{x}-dimensions", type=int, metavar="N",
                       help="ask for N dimensions (the API's `dimensions`)" if shown else hide)
        p.add_argument(f"--{x}-price-per-1m", type=float, metavar="USD",
                       help="cloud price per 1M tokens (default: the table in docs/migration.md)" if shown else hide)
        p.add_argument(f"--{x}-hour-price", type=float, metavar="USD",
                       help="self-hosted: price per hour of what serves it (cost = price / throughput)"
                       if shown else hide)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="embeddings-compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--c ... --h take the same options as --a and --b (--c-key-env, --c-dimensions, ...).")
    p.add_argument("--corpus", type=Path, required=True, help="texts: .jsonl/.json, .csv/.tsv, else one per line")
    p.add_argument("--text-field", default="text", help="JSONL field or CSV column holding the text")
    p.add_argument("--id-field", help="JSONL field or CSV column holding the id (default _id or id, else position)")
    p.add_argument("--title-field", help="JSONL field prefixed to the text (BEIR corpora: title)")
    p.add_argument("--queries", type=Path, help="queries, same formats (default: texts sampled from the corpus)")
    p.add_argument("--qrels", type=Path, help="relevance labels, BEIR TSV or TREC format (needs --queries)")
    p.add_argument("--sample-queries", type=int, default=200, help="corpus texts used as queries without --queries")
    p.add_argument("--seed", type=int, default=0, help="seed of the query and pair samples")
    p.add_argument("--max-pairs", type=int, default=200_000, help="query-doc pairs for the Spearman correlation")
    _endpoint_options(p)
    hourly = p.add_mutually_exclusive_group()
    hourly.add_argument("--gpu-hour-price", type=float, metavar="USD",
                        help="hourly price of the GPU serving each endpoint without a price of its own")
    hourly.add_argument("--node-hour-price", type=float, metavar="USD", help="the same, priced per node")
    p.add_argument("--out", type=Path, default=Path("compare-report"), help="folder for report.md/.json and plots")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="SQLite vector cache")
    p.add_argument("--batch-size", type=int, default=128, help=f"inputs per request (at most {MAX_INPUTS})")
    p.add_argument("--max-batch-tokens", type=int, default=MAX_TOKENS,
                   help="bound on tokens per request (estimated from UTF-8 bytes, an upper bound)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight per endpoint")
    p.add_argument("--max-retries", type=int, default=8, help="retries of a 429/5xx/timeout (honours Retry-After)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def endpoints_and_pricing(args: argparse.Namespace) -> tuple[list[Endpoint], Pricing]:
    endpoints, per_1m, hour = [], {}, {}
    for x in LABELS:
        spec = getattr(args, x)
        if spec is None:
            continue
        endpoints.append(parse_spec(x, spec, getattr(args, f"{x}_key_env"), getattr(args, f"{x}_dimensions")))
        if getattr(args, f"{x}_price_per_1m") is not None:
            per_1m[x] = getattr(args, f"{x}_price_per_1m")
        if getattr(args, f"{x}_hour_price") is not None:
            hour[x] = getattr(args, f"{x}_hour_price")
    if len(endpoints) < 2:
        raise ValueError("give at least two endpoints: --a URL:MODEL --b URL:MODEL")
    for ep in endpoints:
        ep.api_key()  # fail before any call when a key variable is missing
    default = args.gpu_hour_price if args.gpu_hour_price is not None else args.node_hour_price
    label = "GPU" if args.gpu_hour_price is not None else "node"
    return endpoints, Pricing(per_1m, hour, default, label)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not 1 <= args.batch_size <= MAX_INPUTS:
        print(f"embeddings-compare: error: --batch-size must be 1..{MAX_INPUTS}", file=sys.stderr)
        return 2
    options = ClientOptions(args.batch_size, args.max_batch_tokens, args.concurrency, args.max_retries,
                            args.timeout, not args.no_progress)
    try:
        endpoints, pricing = endpoints_and_pricing(args)
        inputs = load_inputs(args.corpus, args.queries, args.qrels, args.sample_queries, args.seed,
                             args.text_field, args.id_field, args.title_field)
        cache = VectorCache(args.cache)
        try:
            result = compare(endpoints, inputs, cache, options, pricing, args.max_pairs)
        finally:
            cache.close()
    except (ValueError, CorpusError, OSError) as e:
        print(f"embeddings-compare: error: {e}", file=sys.stderr)
        return 2
    except openai.APIError as e:
        print(f"embeddings-compare: error: the endpoint answered {type(e).__name__}: {e.message}", file=sys.stderr)
        return 1
    paths = report.write(result, args.out)
    print(paths["markdown"].read_text())
    print(f"Written: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
