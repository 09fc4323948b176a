"""`embeddings-export`: a sentence-transformers model in, a verified Triton model repository out."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from triton_embeddings.export.exporter import PRECISIONS, ExportError, export_model
from triton_embeddings.export.model_spec import UnsupportedModelError
from triton_embeddings.export.triton_config import TARGETS, ServingOptions

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def default_name(source: str) -> str:
    """Triton model name from a hub id or folder: its last path part."""
    return Path(source.rstrip("/")).name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="embeddings-export", description=__doc__)
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL,
                   help=f"sentence-transformers model: local folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--name", help="model name in the repository (default: last part of MODEL)")
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="repository folder")
    p.add_argument("--target", choices=TARGETS, default="embedded",
                   help="gpu: ONNX Runtime backend on GPU (production); cpu: ONNX Runtime backend on CPU; "
                        "embedded: Python-backend steps for the tritonserver bundled in nvidia-pytriton")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32; fp16 (gpu target); int8 (cpu and embedded targets)")
    p.add_argument("--max-batch-size", type=int, default=64, help="most texts per Triton request")
    p.add_argument("--max-seq-length", type=int, help="override the model's max_seq_length")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batcher wait (microseconds)")
    p.add_argument("--instances", type=int, default=1, help="instances per step")
    p.add_argument("--tensorrt", action=argparse.BooleanOptionalAction, default=False,
                   help="gpu target: TensorRT execution provider (fp16 engines unless --precision fp32)")
    p.add_argument("--trt-cache-dir", default="/trt_cache",
                   help="gpu target with --tensorrt: where Triton keeps TensorRT engines (mount a volume)")
    p.add_argument("--prompt", action="append", default=[], metavar="NAME=TEXT",
                   help="add or override a prompt (repeatable), e.g. --prompt 'query=query: ' for e5")
    p.add_argument("--default-prompt", metavar="NAME",
                   help="prompt applied when a request names none (default: the model's own, if any)")
    p.add_argument("--calibration-file", type=Path,
                   help="texts (one per line) that calibrate the int8/uint8 ranges (default: a packaged set)")
    p.add_argument("--source-label", help="what to record as the source in the ensemble config")
    return p


def parse_prompts(items: list[str]) -> dict[str, str]:
    """`NAME=TEXT` pairs; the text keeps its spaces (e5's `query: `)."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--prompt takes NAME=TEXT, got {item!r}")
        out[name.strip()] = text
    return out


def read_calibration(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(texts) < 2:
        raise ValueError(f"{path}: the calibration file needs at least two non-empty lines")
    return texts


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        options = ServingOptions(
            name=args.name or default_name(args.model),
            target=args.target,
            max_batch_size=args.max_batch_size,
            max_queue_delay_us=args.max_queue_delay_us,
            instances=args.instances,
            tensorrt=args.tensorrt,
            tensorrt_fp16=args.precision != "fp32",
            trt_cache_dir=args.trt_cache_dir,
        )
        result = export_model(
            args.model, args.repository, options, precision=args.precision,
            max_seq_length=args.max_seq_length, source_label=args.source_label,
            prompts=parse_prompts(args.prompt), default_prompt=args.default_prompt,
            calibration_texts=read_calibration(args.calibration_file),
        )
    except (ExportError, UnsupportedModelError, ValueError) as exc:
        print(f"embeddings-export: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"embeddings-export: error: cannot load or write the model: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
