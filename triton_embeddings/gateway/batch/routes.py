"""`/v1/files` and `/v1/batches`, as OpenAI's: a job and its files are seen only by the key that made them."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from starlette.responses import Response, StreamingResponse

from triton_embeddings.gateway.batch import jsonl
from triton_embeddings.gateway.batch.protocol import (
    Batch,
    BatchCreateRequest,
    FileObject,
    file_object,
    listing,
    moved,
    new_batch,
    new_id,
)
from triton_embeddings.gateway.batch.store import BatchStore
from triton_embeddings.gateway.errors import APIError, ErrorKind
from triton_embeddings.gateway.http.routes import ERRORS, check_api_key, json_response

router = APIRouter(dependencies=[Depends(check_api_key)], responses={**ERRORS, 409: ERRORS[400]})
CANCELLABLE = ("validating", "in_progress")


def _store(request: Request) -> BatchStore:
    store = request.app.state.batch_store
    if store is None:
        raise APIError(ErrorKind.NOT_FOUND, "The Batch API is turned off on this server (EMBEDDINGS_BATCH_ENABLED).")
    return store


def _key(request: Request) -> str | None:
    return getattr(request.state, "key_id", None)


def _visible(request: Request, found: tuple[dict, str | None] | None, what: str, item_id: str) -> dict:
    """The object if the caller's key made it (or auth is off); else 404, as if there were none."""
    key = _key(request)
    if found is None or (key is not None and found[1] != key):
        raise APIError(ErrorKind.NOT_FOUND, f"No such {what}: '{item_id}'.", param="id" if what == "File" else None)
    return found[0]


async def _listing(request: Request, kind: str, limit: int, after: str | None) -> Response:
    """A cursor page of the caller's files or batches, newest first."""
    page = await getattr(_store(request), f"list_{kind}")(_key(request), limit, after)
    return json_response(listing(page.data, page.has_more))


def _file_problem(e: jsonl.FileProblems) -> APIError:
    first = e.problems[0]
    more = f" ({len(e.problems) - 1} more lines have problems.)" if len(e.problems) > 1 else ""
    return APIError(ErrorKind.INVALID_REQUEST, first.message + more, param=first.param, code=first.code)


def _too_many(e: jsonl.TooManyRequests) -> APIError:
    return APIError(ErrorKind.BODY_TOO_LARGE, str(e), param="file", code="too_many_requests")


@router.post("/v1/files", response_model=FileObject)
async def create_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...)) -> Response:  # noqa: B008
    """Upload a JSONL file with purpose `batch`; every line is checked here (400 naming the line)."""
    store = _store(request)
    if purpose != "batch":
        raise APIError(ErrorKind.INVALID_REQUEST, f"'purpose' must be 'batch' (got {purpose!r}).", param="purpose")
    content = await file.read()
    try:
        jsonl.parse(content, request.app.state.settings.batch_max_requests)
    except jsonl.FileProblems as e:
        raise _file_problem(e) from None
    except jsonl.TooManyRequests as e:
        raise _too_many(e) from None
    meta = file_object(new_id("file"), len(content), file.filename or "input.jsonl", purpose)
    await store.put_file(meta, _key(request), content)
    return json_response(meta)


@router.get("/v1/files")
async def list_files(request: Request, limit: int = Query(100, ge=1, le=10_000), after: str | None = None) -> Response:
    return await _listing(request, "files", limit, after)


@router.get("/v1/files/{file_id}", response_model=FileObject)
async def get_file(file_id: str, request: Request) -> Response:
    return json_response(_visible(request, await _store(request).get_file(file_id), "File", file_id))


async def _chain(first: bytes, rest):
    yield first
    async for page in rest:
        yield page


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, request: Request) -> Response:
    """The file streamed a page of lines at a time (`EMBEDDINGS_BATCH_PAGE_LINES`); its first page is read
    before the answer starts, so a store that is down is still a 503."""
    store = _store(request)
    meta = _visible(request, await store.get_file(file_id), "File", file_id)
    pages = store.file_pages(file_id, request.app.state.settings.batch_page_lines)
    first = await anext(pages, b"")
    return StreamingResponse(_chain(first, pages), media_type="application/jsonl",
                             headers={"content-length": str(meta["bytes"])})


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> Response:
    store = _store(request)
    _visible(request, await store.get_file(file_id), "File", file_id)
    await store.delete_file(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


@router.post("/v1/batches", response_model=Batch)
async def create_batch(body: BatchCreateRequest, request: Request) -> Response:
    """Check every line of the input file for the endpoint; a batch whose file fails is recorded `failed`."""
    store = _store(request)
    meta = _visible(request, await store.get_file(body.input_file_id), "File", body.input_file_id)
    if meta["purpose"] != "batch":
        raise APIError(ErrorKind.INVALID_REQUEST, f"File '{body.input_file_id}' has purpose '{meta['purpose']}': "
                       "a batch's input file is one uploaded with purpose 'batch'.", param="input_file_id")
    content = await store.file_content(body.input_file_id) or b""
    try:
        requests = jsonl.parse(content, request.app.state.settings.batch_max_requests)
        jsonl.check_endpoint(requests, body.endpoint)
    except jsonl.TooManyRequests as e:
        raise _too_many(e) from None
    except jsonl.FileProblems as e:
        failed = moved(new_batch(body, 0, [p.wire() for p in e.problems]), "failed")
        await store.put_batch(failed, _key(request))
        err = _file_problem(e)
        err.message += f" Batch {failed['id']} failed validation; its 'errors' list every line."
        raise err from None
    batch = new_batch(body, len(requests), [p.wire() for p in jsonl.mixed_models(requests)])
    await store.put_batch(batch, _key(request))
    return json_response(batch)


@router.get("/v1/batches/{batch_id}", response_model=Batch)
async def get_batch(batch_id: str, request: Request) -> Response:
    return json_response(_visible(request, await _store(request).get_batch(batch_id), "batch", batch_id))


@router.get("/v1/batches")
async def list_batches(request: Request, limit: int = Query(20, ge=1, le=100), after: str | None = None) -> Response:
    return await _listing(request, "batches", limit, after)


@router.post("/v1/batches/{batch_id}/cancel", response_model=Batch)
async def cancel_batch(batch_id: str, request: Request) -> Response:
    """validating or in_progress -> cancelling (the runner writes what ran, then `cancelled`); finished: 409."""
    store = _store(request)
    batch = _visible(request, await store.get_batch(batch_id), "batch", batch_id)
    if batch["status"] == "cancelling":
        return json_response(batch)
    new = await store.update_batch(batch_id, lambda b: moved(b, "cancelling") if b["status"] in CANCELLABLE else None)
    if new is None:
        now = (await store.get_batch(batch_id))[0]
        raise APIError(ErrorKind.CONFLICT, f"Cannot cancel a batch with status '{now['status']}'.",
                       code="batch_not_cancellable")
    return json_response(new)
