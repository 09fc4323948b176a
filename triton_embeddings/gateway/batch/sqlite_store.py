"""The SQLite batch store: one file (WAL), for one gateway or several on one host; calls run in a thread."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

from triton_embeddings.gateway.batch.store import ACTIVE, BatchStore, Change, Line, Page, unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT,
                                  meta TEXT NOT NULL, content BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT,
                                    status TEXT NOT NULL, record TEXT NOT NULL, runner TEXT, lease_until REAL);
CREATE TABLE IF NOT EXISTS lines (batch_id TEXT NOT NULL, idx INTEGER NOT NULL, failed INTEGER NOT NULL,
                                  body BLOB NOT NULL, PRIMARY KEY (batch_id, idx));
"""


def _owned(owner: str | None) -> tuple[str, tuple]:
    return ("", ()) if owner is None else (" AND owner = ?", (owner,))


class SQLiteStore(BatchStore):
    name = "sqlite"

    def __init__(self, path: str):
        self.path = Path(path).expanduser()
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def is_outage(self, e: Exception) -> bool:
        return isinstance(e, (OSError, sqlite3.OperationalError, sqlite3.DatabaseError))

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    async def _run(self, fn, *args):
        def locked():
            with self._lock:
                return fn(self._open(), *args)

        return await asyncio.to_thread(locked)

    @unavailable
    async def put_file(self, meta: dict, owner: str | None, content: bytes) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO files (id, owner, meta, content) VALUES (?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "meta = excluded.meta, content = excluded.content", (meta["id"], owner, json.dumps(meta), content)))

    @unavailable
    async def get_file(self, file_id: str) -> tuple[dict, str | None] | None:
        row = await self._run(lambda db: db.execute("SELECT meta, owner FROM files WHERE id = ?",
                                                    (file_id,)).fetchone())
        return None if row is None else (json.loads(row[0]), row[1])

    @unavailable
    async def file_content(self, file_id: str) -> bytes | None:
        row = await self._run(lambda db: db.execute("SELECT content FROM files WHERE id = ?", (file_id,)).fetchone())
        return None if row is None else bytes(row[0])

    def _page(self, db, table: str, column: str, owner, limit: int, after: str | None) -> Page:
        where, args = _owned(owner)
        if after is not None:
            where += f" AND seq < COALESCE((SELECT seq FROM {table} WHERE id = ?), -1)"
            args += (after,)
        rows = db.execute(f"SELECT {column} FROM {table} WHERE 1 = 1{where} ORDER BY seq DESC LIMIT ?",
                          (*args, limit + 1)).fetchall()
        return Page([json.loads(r[0]) for r in rows[:limit]], len(rows) > limit)

    @unavailable
    async def list_files(self, owner: str | None, limit: int, after: str | None) -> Page:
        return await self._run(self._page, "files", "meta", owner, limit, after)

    @unavailable
    async def delete_file(self, file_id: str) -> bool:
        cur = await self._run(lambda db: db.execute("DELETE FROM files WHERE id = ?", (file_id,)))
        return cur.rowcount > 0

    @unavailable
    async def put_batch(self, batch: dict, owner: str | None) -> None:
        await self._run(lambda db: db.execute("INSERT INTO batches (id, owner, status, record) VALUES (?, ?, ?, ?)",
                                              (batch["id"], owner, batch["status"], json.dumps(batch))))

    def _counted(self, db, record: dict) -> dict:
        done, failed = db.execute("SELECT COUNT(*), COALESCE(SUM(failed), 0) FROM lines WHERE batch_id = ?",
                                  (record["id"],)).fetchone()
        counts = record["request_counts"]
        return {**record, "request_counts": {**counts, "completed": done - failed, "failed": failed}}

    @unavailable
    async def get_batch(self, batch_id: str) -> tuple[dict, str | None] | None:
        def get(db):
            row = db.execute("SELECT record, owner FROM batches WHERE id = ?", (batch_id,)).fetchone()
            return None if row is None else (self._counted(db, json.loads(row[0])), row[1])

        return await self._run(get)

    @unavailable
    async def list_batches(self, owner: str | None, limit: int, after: str | None) -> Page:
        def page(db):
            got = self._page(db, "batches", "record", owner, limit, after)
            return Page([self._counted(db, r) for r in got.data], got.has_more)

        return await self._run(page)

    @unavailable
    async def update_batch(self, batch_id: str, change: Change) -> dict | None:
        def update(db):
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT record FROM batches WHERE id = ?", (batch_id,)).fetchone()
                new = None if row is None else change(self._counted(db, json.loads(row[0])))
                if new is not None:
                    db.execute("UPDATE batches SET record = ?, status = ? WHERE id = ?",
                               (json.dumps(new), new["status"], batch_id))
                db.execute("COMMIT")
                return new
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return await self._run(update)

    @unavailable
    async def active_batches(self) -> list[str]:
        marks = ", ".join("?" * len(ACTIVE))
        rows = await self._run(lambda db: db.execute(
            f"SELECT id FROM batches WHERE status IN ({marks}) ORDER BY seq", ACTIVE).fetchall())
        return [r[0] for r in rows]

    @unavailable
    async def status_counts(self) -> dict[str, int]:
        rows = await self._run(lambda db: db.execute("SELECT status, COUNT(*) FROM batches GROUP BY status").fetchall())
        return dict(rows)

    @unavailable
    async def acquire(self, batch_id: str, runner: str, ttl_s: float) -> bool:
        now = time.time()
        cur = await self._run(lambda db: db.execute(
            "UPDATE batches SET runner = ?, lease_until = ? WHERE id = ? AND "
            "(runner IS NULL OR runner = ? OR lease_until < ?)", (runner, now + ttl_s, batch_id, runner, now)))
        return cur.rowcount > 0

    @unavailable
    async def release(self, batch_id: str, runner: str) -> None:
        await self._run(lambda db: db.execute(
            "UPDATE batches SET runner = NULL, lease_until = NULL WHERE id = ? AND runner = ?", (batch_id, runner)))

    @unavailable
    async def put_line(self, batch_id: str, index: int, failed: bool, body: bytes) -> bool:
        cur = await self._run(lambda db: db.execute(
            "INSERT OR IGNORE INTO lines (batch_id, idx, failed, body) VALUES (?, ?, ?, ?)",
            (batch_id, index, int(failed), body)))
        return cur.rowcount > 0

    @unavailable
    async def done_indices(self, batch_id: str) -> set[int]:
        rows = await self._run(lambda db: db.execute("SELECT idx FROM lines WHERE batch_id = ?",
                                                     (batch_id,)).fetchall())
        return {r[0] for r in rows}

    @unavailable
    async def lines(self, batch_id: str) -> list[Line]:
        rows = await self._run(lambda db: db.execute(
            "SELECT idx, failed, body FROM lines WHERE batch_id = ? ORDER BY idx", (batch_id,)).fetchall())
        return [Line(i, bool(f), bytes(b)) for i, f, b in rows]

    async def close(self) -> None:
        def close():
            with self._lock:
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.to_thread(close)
