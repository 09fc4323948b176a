"""The seed design, kept as a baseline: an `async def` FastAPI handler calling `SentenceTransformer.encode`.

Run: `uvicorn bench.reference_server:app --port 8090` with REFERENCE_MODEL=<sentence-transformers folder>.
The blocking `encode` runs on the event loop, so requests are embedded one at a time.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(os.environ["REFERENCE_MODEL"], device="cpu")
app = FastAPI()


class Request(BaseModel):
    input: str | list[str]
    model: str = "reference"


@app.post("/v1/embeddings")
async def embeddings(req: Request) -> dict:
    texts = [req.input] if isinstance(req.input, str) else req.input
    vectors = model.encode(texts, normalize_embeddings=True)
    return {
        "object": "list",
        "data": [{"object": "embedding", "embedding": v.tolist(), "index": i} for i, v in enumerate(vectors)],
        "model": req.model,
        "usage": {"prompt_tokens": 0, "total_tokens": 0},
    }
