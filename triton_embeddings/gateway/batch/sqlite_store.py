"""The SQLite batch store: one file (WAL), for one gateway or several on one host; calls run in a thread."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path

from triton_embeddings.gateway.batch.store import ACTIVE, FAILED, OK, UNRUN, BatchStore, Change, Line, Page, unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT,
                                  meta TEXT NOT NULL, content BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, owner TEXT,
                                    status TEXT NOT NULL, record TEXT NOT NULL, runner TEXT, lease_until REAL);
CREATE TABLE IF NOT EXISTS lines (batch_id TEXT NOT NULL, idx INTEGER NOT NULL, failed INTEGER NOT NULL,
                                  body BLOB NOT NULL, PRIMARY KEY (batch_id, idx));
CREATE TABLE IF NOT EXISTS output_files (file_id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, errors INTEGER NOT NULL);
"""
# `lines.failed` holds the line's kind (OK, FAILED, UNRUN); the error file is every line whose kind is not OK.
OF_FILE = "batch_id = ? AND (failed != 0) = ?"


def _atomic(db: sqlite3.Connection, work):
    """`work(db)` in one write transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        out = work(db)
        db.execute("COMMIT")
        return out
    except BaseException:
        db.execute("ROLLBACK")
        raise


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

    @unavailable
    async def put_output_file(self, meta: dict, owner: str | None, batch_id: str, errors: bool) -> None:
        def put(db):
            db.execute("INSERT INTO files (id, owner, meta, content) VALUES (?, ?, ?, x'') ON CONFLICT(id) DO UPDATE "
                       "SET meta = excluded.meta", (meta["id"], owner, json.dumps(meta)))
            db.execute("INSERT OR REPLACE INTO output_files VALUES (?, ?, ?)", (meta["id"], batch_id, int(errors)))

        await self._run(_atomic, put)

    @unavailable
    async def file_source(self, file_id: str) -> tuple[str, bool] | None:
        row = await self._run(lambda db: db.execute("SELECT batch_id, errors FROM output_files WHERE file_id = ?",
                                                    (file_id,)).fetchone())
        return None if row is None else (row[0], bool(row[1]))

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
        def delete(db):
            db.execute("DELETE FROM output_files WHERE file_id = ?", (file_id,))
            return db.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0

        return await self._run(_atomic, delete)

    @unavailable
    async def put_batch(self, batch: dict, owner: str | None) -> None:
        await self._run(lambda db: db.execute("INSERT INTO batches (id, owner, status, record) VALUES (?, ?, ?, ?)",
                                              (batch["id"], owner, batch["status"], json.dumps(batch))))

    def _counted(self, db, record: dict) -> dict:
        ok, failed = db.execute("SELECT COALESCE(SUM(failed = ?), 0), COALESCE(SUM(failed = ?), 0) FROM lines "
                                "WHERE batch_id = ?", (OK, FAILED, record["id"])).fetchone()
        counts = record["request_counts"]
        return {**record, "request_counts": {**counts, "completed": ok, "failed": failed}}

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
            row = db.execute("SELECT record FROM batches WHERE id = ?", (batch_id,)).fetchone()
            new = None if row is None else change(self._counted(db, json.loads(row[0])))
            if new is not None:
                db.execute("UPDATE batches SET record = ?, status = ? WHERE id = ?",
                           (json.dumps(new), new["status"], batch_id))
            return new

        return await self._run(_atomic, update)

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
    async def put_line(self, batch_id: str, index: int, kind: int, body: bytes) -> bool:
        cur = await self._run(lambda db: db.execute(
            "INSERT OR IGNORE INTO lines (batch_id, idx, failed, body) VALUES (?, ?, ?, ?)",
            (batch_id, index, int(kind), body)))
        return cur.rowcount > 0

    @unavailable
    async def put_unrun(self, batch_id: str, lines: list[tuple[int, bytes]]) -> None:
        rows = [(batch_id, index, UNRUN, body) for index, body in lines]
        await self._run(_atomic, lambda db: db.executemany(
            "INSERT OR IGNORE INTO lines (batch_id, idx, failed, body) VALUES (?, ?, ?, ?)", rows))

    @unavailable
    async def done_indices(self, batch_id: str) -> set[int]:
        rows = await self._run(lambda db: db.execute("SELECT idx FROM lines WHERE batch_id = ?",
                                                     (batch_id,)).fetchall())
        return {r[0] for r in rows}

    @unavailable
    async def line_page(self, batch_id: str, errors: bool, after: int, limit: int) -> list[Line]:
        rows = await self._run(lambda db: db.execute(
            f"SELECT idx, body FROM lines WHERE {OF_FILE} AND idx > ? ORDER BY idx LIMIT ?",
            (batch_id, errors, after, limit)).fetchall())
        return [Line(i, bytes(b)) for i, b in rows]

    @unavailable
    async def line_stats(self, batch_id: str, errors: bool) -> tuple[int, int]:
        return await self._run(lambda db: db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(LENGTH(body) + 1), 0) FROM lines WHERE {OF_FILE}",
            (batch_id, errors)).fetchone())

    async def close(self) -> None:
        def close():
            with self._lock:
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.to_thread(close)
