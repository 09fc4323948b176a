"""The seed-style rerank baseline: an `async def` FastAPI handler calling `CrossEncoder.predict`.

Run: `uvicorn bench.reference_rerank_server:app --port 8091` with REFERENCE_RERANKER=<CrossEncoder folder>.
The blocking `predict` runs on the event loop, so requests are scored one at a time.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import CrossEncoder

model = CrossEncoder(os.environ["REFERENCE_RERANKER"], device="cpu")
app = FastAPI()


class Request(BaseModel):
    query: str
    documents: list[str]
    model: str = "reference"
    top_n: int | None = None


@app.post("/v1/rerank")
async def rerank(req: Request) -> dict:
    scores = model.predict([(req.query, d) for d in req.documents])
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: req.top_n]
    return {"results": [{"index": i, "relevance_score": float(scores[i])} for i in order]}
