"""Wire shapes of OpenAI's Files and Batch APIs (the subset a batch of embeddings or rerank requests uses)."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr
from typing_extensions import TypedDict

from triton_embeddings.gateway.batch.jsonl import ENDPOINTS

WINDOW_S = {"24h": 24 * 3600}
TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
              "cancelled_at")


class BatchCreateRequest(BaseModel):
    """Body of `POST /v1/batches`."""

    model_config = ConfigDict(extra="allow")
    input_file_id: StrictStr = Field(description="A file uploaded with purpose `batch`.")
    endpoint: Literal[ENDPOINTS] = Field(description="The endpoint every line calls.")  # type: ignore[valid-type]
    completion_window: Literal["24h"] = Field(description="Past it, the batch expires (finished lines are kept).")
    metadata: dict[str, StrictStr] | None = Field(None, description="Up to 16 key-value pairs, kept as given.")


class FileObject(TypedDict):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"]
    status_details: str | None


class RequestCounts(TypedDict):
    total: int
    completed: int
    failed: int


class Batch(TypedDict):
    """OpenAI's `Batch`; the timestamps of the statuses not reached are null."""

    id: str
    object: Literal["batch"]
    endpoint: str
    errors: dict | None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    expires_at: int
    request_counts: RequestCounts
    metadata: dict | None


class FileDeleted(TypedDict):
    id: str
    object: Literal["file"]
    deleted: bool


class FileList(TypedDict):
    """A cursor page of files (`after` = `last_id`)."""

    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class BatchList(TypedDict):
    """A cursor page of batches (`after` = `last_id`)."""

    object: Literal["list"]
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


def file_object(file_id: str, size: int, filename: str, purpose: str) -> FileObject:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()), "filename": filename,
            "purpose": purpose, "status": "processed", "status_details": None}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def derived_id(prefix: str, *parts: object) -> str:
    """An id that every runner derives the same (output files, output line ids): rewriting it is idempotent."""
    return f"{prefix}_{hashlib.sha256(':'.join(map(str, parts)).encode()).hexdigest()[:32]}"


def new_batch(body: BatchCreateRequest, total: int, errors: list[dict] | None) -> dict:
    now = int(time.time())
    batch = {"id": new_id("batch"), "object": "batch", "endpoint": body.endpoint,
             "errors": {"object": "list", "data": errors} if errors else None, "input_file_id": body.input_file_id,
             "completion_window": body.completion_window, "status": "validating", "output_file_id": None,
             "error_file_id": None, "created_at": now, "expires_at": now + WINDOW_S[body.completion_window],
             "request_counts": {"total": total, "completed": 0, "failed": 0}, "metadata": body.metadata}
    return batch | dict.fromkeys(TIMESTAMPS)


def moved(batch: dict, status: str, **fields) -> dict:
    """The record in `status`, stamped with its timestamp (`<status>_at`)."""
    return {**batch, **fields, "status": status, f"{status}_at": int(time.time())}


def listing(data: list, has_more: bool) -> dict:
    """A cursor page (`after` = the last id)."""
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
