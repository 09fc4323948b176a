"""Encoder throughput of the seed's models on a GPU, for the cost formula (docs/migration.md).

Throughput does not depend on weight values, so the models are built from their configs with random
weights (no hub access is needed on the GPU host). It measures the transformer plus mean pooling in
PyTorch (fp16 and fp32), texts of fixed token lengths, in batches; it is a proxy for the ONNX encoder
Triton runs on the GPU target, not a measurement of Triton itself.

    python bench/gpu_throughput.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import time

from provenance import provenance  # bench/provenance.py, beside this script

# Configs of all-MiniLM-L6-v2 and all-mpnet-base-v2 (their config.json, weights omitted).
MODELS = {
    "all-MiniLM-L6-v2": ("BertConfig", dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                                            num_attention_heads=12, intermediate_size=1536,
                                            max_position_embeddings=512)),
    "all-mpnet-base-v2": ("MPNetConfig", dict(vocab_size=30527, hidden_size=768, num_hidden_layers=12,
                                              num_attention_heads=12, intermediate_size=3072,
                                              max_position_embeddings=514)),
}


def build(name: str, dtype, device: str):
    import transformers

    kind, kwargs = MODELS[name]
    config = getattr(transformers, kind)(**kwargs)
    return transformers.AutoModel.from_config(config).to(device=device, dtype=dtype).eval()


def measure(model, batch: int, length: int, device: str, seconds: float) -> float:
    """Texts per second for batches of `batch` texts of `length` tokens (mean pooling included)."""
    import torch

    ids = torch.randint(1000, 20000, (batch, length), device=device)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for _ in range(3):
            model(input_ids=ids, attention_mask=mask)
        torch.cuda.synchronize()
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            runs += 1
        torch.cuda.synchronize()
        return runs * batch / (time.perf_counter() - start)


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_throughput.json")
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    rows = []
    for name in MODELS:
        for dtype in (torch.float16, torch.float32):
            model = build(name, dtype, "cuda")
            for length in (16, 128, 256):
                for batch in (32, 128):
                    tps = measure(model, batch, length, "cuda", args.seconds)
                    rows.append({"model": name, "dtype": str(dtype).split(".")[-1], "tokens": length,
                                 "batch": batch, "texts_per_s": round(tps, 1), "tokens_per_s": round(tps * length)})
                    print(json.dumps(rows[-1]), flush=True)
            del model
            torch.cuda.empty_cache()
    info = {"provenance": provenance("bench/gpu_throughput.py"), "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    main()
