"""The Redis batch store, shared by every gateway: a job is a hash (record, owner, status), its output lines a
hash by line index written with HSETNX (in the same script: counted, indexed in a sorted set per output file,
their bytes added up), its lease a key with an expiry. A job's output file is a hash naming the job and kind."""

from __future__ import annotations

import json
import time

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import WatchError

from triton_embeddings.gateway.batch.store import OK, TERMINAL, UNRUN, BatchStore, Change, Line, Page, unavailable

P = "embeddings:batch:"  # every key of the store starts with it
# Write line ARGV[1] (stored as its kind's digit then its JSON) once; count it as completed or failed (kind ARGV[3]
# "0" or "1"; "2", unrun, is not counted), add its index to its file's sorted set KEYS[3] and its ARGV[4] bytes
# to the file's total (field ARGV[5] of KEYS[4]).
PUT_LINE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
if ARGV[3] ~= '2' then
  redis.call('HINCRBY', KEYS[2], ARGV[3] == '1' and 'failed' or 'completed', 1)
end
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[5], ARGV[4])
return 1
"""
# Take the lease when it is free or already ours (then renew it).
ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def _index(kind: str, owner: str | None) -> str:
    return f"{P}{kind}:all" if owner is None else f"{P}{kind}:owner:{owner}"


def _file_kind(errors: bool) -> str:
    return "error" if errors else "output"


class RedisStore(BatchStore):
    name = "redis"

    def __init__(self, url: str, timeout_s: float = 5.0):
        self._redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._put_line = self._redis.register_script(PUT_LINE)
        self._acquire = self._redis.register_script(ACQUIRE)
        self._release = self._redis.register_script(RELEASE)

    def is_outage(self, e: Exception) -> bool:
        return isinstance(e, (OSError, RedisConnectionError, RedisTimeoutError))

    def _indexed(self, kind: str, item_id: str, owner: str | None, pipe) -> None:
        seq = time.time_ns()  # newest first; ids break ties
        for key in {_index(kind, None), _index(kind, owner)}:
            pipe.zadd(key, {item_id: seq}, nx=True)

    @unavailable
    async def put_file(self, meta: dict, owner: str | None, content: bytes) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{P}file:{meta['id']}", mapping={"meta": json.dumps(meta), "owner": owner or "",
                                                        "content": content})
            self._indexed("files", meta["id"], owner, pipe)
            await pipe.execute()

    @unavailable
    async def get_file(self, file_id: str) -> tuple[dict, str | None] | None:
        meta, owner = await self._redis.hmget(f"{P}file:{file_id}", ["meta", "owner"])
        return None if meta is None else (json.loads(meta), owner.decode() or None)

    @unavailable
    async def file_content(self, file_id: str) -> bytes | None:
        return await self._redis.hget(f"{P}file:{file_id}", "content")

    @unavailable
    async def put_output_file(self, meta: dict, owner: str | None, batch_id: str, errors: bool) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{P}file:{meta['id']}", mapping={"meta": json.dumps(meta), "owner": owner or "",
                                                        "batch": batch_id, "errors": int(errors)})
            self._indexed("files", meta["id"], owner, pipe)
            await pipe.execute()

    @unavailable
    async def file_source(self, file_id: str) -> tuple[str, bool] | None:
        batch, errors = await self._redis.hmget(f"{P}file:{file_id}", ["batch", "errors"])
        return None if batch is None else (batch.decode(), errors == b"1")

    async def _page(self, kind: str, owner: str | None, limit: int, after: str | None) -> list[str]:
        key = _index(kind, owner)
        top = "+inf"
        if after is not None:
            score = await self._redis.zscore(key, after)
            if score is None:
                return []
            top = f"({int(score)}"
        ids = await self._redis.zrevrangebyscore(key, top, "-inf", start=0, num=limit + 1)
        return [i.decode() for i in ids]

    @unavailable
    async def list_files(self, owner: str | None, limit: int, after: str | None) -> Page:
        ids = await self._page("files", owner, limit, after)
        metas = [await self._redis.hget(f"{P}file:{i}", "meta") for i in ids[:limit]]
        return Page([json.loads(m) for m in metas if m is not None], len(ids) > limit)

    @unavailable
    async def delete_file(self, file_id: str) -> bool:
        owner = await self._redis.hget(f"{P}file:{file_id}", "owner")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(f"{P}file:{file_id}")
            for key in {_index("files", None), _index("files", (owner or b"").decode() or None)}:
                pipe.zrem(key, file_id)
            deleted, *_ = await pipe.execute()
        return bool(deleted)

    @unavailable
    async def put_batch(self, batch: dict, owner: str | None) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(f"{P}batch:{batch['id']}", mapping={"record": json.dumps(batch), "owner": owner or "",
                                                          "status": batch["status"]})
            pipe.hincrby(f"{P}status", batch["status"], 1)
            if batch["status"] not in TERMINAL:
                pipe.zadd(f"{P}active", {batch["id"]: time.time_ns()})
            self._indexed("batches", batch["id"], owner, pipe)
            await pipe.execute()

    async def _counted(self, record: dict) -> dict:
        done = await self._redis.hgetall(f"{P}counts:{record['id']}")
        counts = {**record["request_counts"], **{k.decode(): int(v) for k, v in done.items()}}
        return {**record, "request_counts": counts}

    @unavailable
    async def get_batch(self, batch_id: str) -> tuple[dict, str | None] | None:
        record, owner = await self._redis.hmget(f"{P}batch:{batch_id}", ["record", "owner"])
        return None if record is None else (await self._counted(json.loads(record)), owner.decode() or None)

    @unavailable
    async def list_batches(self, owner: str | None, limit: int, after: str | None) -> Page:
        ids = await self._page("batches", owner, limit, after)
        records = [await self._redis.hget(f"{P}batch:{i}", "record") for i in ids[:limit]]
        return Page([await self._counted(json.loads(r)) for r in records if r is not None], len(ids) > limit)

    @unavailable
    async def update_batch(self, batch_id: str, change: Change) -> dict | None:
        key = f"{P}batch:{batch_id}"
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.hget(key, "record")
                    new = None if raw is None else change(await self._counted(json.loads(raw)))
                    if new is None:
                        await pipe.unwatch()
                        return None
                    old = json.loads(raw)["status"]
                    pipe.multi()
                    pipe.hset(key, mapping={"record": json.dumps(new), "status": new["status"]})
                    if new["status"] != old:
                        pipe.hincrby(f"{P}status", old, -1)
                        pipe.hincrby(f"{P}status", new["status"], 1)
                    if new["status"] in TERMINAL:
                        pipe.zrem(f"{P}active", batch_id)
                    await pipe.execute()
                    return new
                except WatchError:  # written meanwhile (another gateway): read it again
                    continue

    @unavailable
    async def active_batches(self) -> list[str]:
        return [i.decode() for i in await self._redis.zrange(f"{P}active", 0, -1)]

    @unavailable
    async def status_counts(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in (await self._redis.hgetall(f"{P}status")).items()}

    @unavailable
    async def acquire(self, batch_id: str, runner: str, ttl_s: float) -> bool:
        return bool(await self._acquire(keys=[f"{P}lease:{batch_id}"], args=[runner, int(ttl_s * 1000)]))

    @unavailable
    async def release(self, batch_id: str, runner: str) -> None:
        await self._release(keys=[f"{P}lease:{batch_id}"], args=[runner])

    def _line(self, batch_id: str, index: int, kind: int, body: bytes, client=None):
        file = _file_kind(kind != OK)
        keys = [f"{P}lines:{batch_id}", f"{P}counts:{batch_id}", f"{P}{file}:{batch_id}", f"{P}bytes:{batch_id}"]
        return self._put_line(keys=keys, args=[index, b"%d" % kind + body, kind, len(body) + 1, file], client=client)

    @unavailable
    async def put_line(self, batch_id: str, index: int, kind: int, body: bytes) -> bool:
        return bool(await self._line(batch_id, index, int(kind), body))

    @unavailable
    async def put_unrun(self, batch_id: str, lines: list[tuple[int, bytes]]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for index, body in lines:
                await self._line(batch_id, index, UNRUN, body, client=pipe)
            await pipe.execute()

    @unavailable
    async def done_indices(self, batch_id: str) -> set[int]:
        return {int(i) for i in await self._redis.hkeys(f"{P}lines:{batch_id}")}

    @unavailable
    async def line_page(self, batch_id: str, errors: bool, after: int, limit: int) -> list[Line]:
        key = f"{P}{_file_kind(errors)}:{batch_id}"
        indices = [int(i) for i in await self._redis.zrangebyscore(key, f"({after}", "+inf", start=0, num=limit)]
        if not indices:
            return []
        bodies = await self._redis.hmget(f"{P}lines:{batch_id}", indices)
        return [Line(i, v[1:]) for i, v in zip(indices, bodies, strict=True)]

    @unavailable
    async def line_stats(self, batch_id: str, errors: bool) -> tuple[int, int]:
        kind = _file_kind(errors)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zcard(f"{P}{kind}:{batch_id}")
            pipe.hget(f"{P}bytes:{batch_id}", kind)
            lines, size = await pipe.execute()
        return lines, int(size or 0)

    async def close(self) -> None:
        await self._redis.aclose()
