"""The seed's design on a GPU, the baseline the issue compares with: an `async def` FastAPI handler calling
`SentenceTransformer.encode` (fp32, its default batch size), one model per name.

Run: `uvicorn seed_server:app` (from bench/gpu) with SEED_MODELS="name=folder;name=folder" and SEED_DEVICE
(default: cuda when present). The blocking `encode` runs on the event loop, so requests are embedded one at
a time, as in the seed (bench/reference_server.py is the same design on the CPU, one model).
"""

from __future__ import annotations

import os

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

DEVICE = os.environ.get("SEED_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
MODELS = {name: SentenceTransformer(path, device=DEVICE)
          for name, path in (item.split("=", 1) for item in os.environ["SEED_MODELS"].split(";") if item)}
app = FastAPI()


class Request(BaseModel):
    input: str | list[str]
    model: str


@app.get("/ready")
async def ready() -> dict:
    return {"models": sorted(MODELS), "device": DEVICE}


@app.post("/v1/embeddings")
async def embeddings(req: Request) -> dict:
    texts = [req.input] if isinstance(req.input, str) else req.input
    vectors = MODELS[req.model].encode(texts, normalize_embeddings=True)
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": v.tolist(), "index": i} for i, v in enumerate(vectors)],
        "model": req.model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
