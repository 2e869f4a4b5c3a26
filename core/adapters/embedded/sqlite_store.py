"""The embedded repository: voices and tasks in one SQLite file.

Every call runs on one dedicated thread that owns the connection, so the event loop
never blocks on disk and no two statements of this process interleave. WAL mode lets
another process (a second worker on the same machine) read while this one writes, and
writes that must be atomic across processes (`transition`) are single `UPDATE ...
RETURNING` statements.

Datetimes are stored as fixed-width ISO-8601 UTC strings, so comparing the text
compares the instants; `metadata` and `webhook` are JSON columns.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from ...domain import (
    FINAL_STATUSES,
    PRIORITY_ORDER,
    QUEUED_STATUSES,
    Priority,
    Task,
    TaskKind,
    TaskStatus,
    Voice,
    VoiceStats,
)
from ...errors import (
    BackendUnavailable,
    Conflict,
    InvalidInput,
    TaskNotFound,
    VoiceAlreadyExists,
    VoiceNotFound,
)

T = TypeVar("T")

# Each entry moves the schema one version forward; PRAGMA user_version records how
# many have run. Append new steps, never edit old ones: files in the field hold them.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE voices (
            voice_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            description TEXT,
            voice_type TEXT NOT NULL,
            language TEXT,
            prompt_text TEXT,
            audio_format TEXT NOT NULL,
            file_size INTEGER NOT NULL,
            duration REAL NOT NULL,
            sample_rate INTEGER NOT NULL,
            is_active INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            sample_key TEXT NOT NULL,
            sample_sha256 TEXT NOT NULL
        )
        """,
        "CREATE INDEX voices_by_created ON voices (created_at, voice_id)",
        "CREATE INDEX voices_by_type ON voices (voice_type, created_at)",
        "CREATE INDEX voices_by_language ON voices (language, created_at)",
        """
        CREATE TABLE tasks (
            task_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            version TEXT NOT NULL,
            status TEXT NOT NULL,
            priority TEXT NOT NULL,
            priority_rank INTEGER NOT NULL,
            text TEXT NOT NULL,
            voice_id TEXT NOT NULL,
            format TEXT NOT NULL,
            speed REAL NOT NULL,
            instruct_text TEXT,
            callback_url TEXT,
            metadata TEXT NOT NULL DEFAULT '{}',
            filename TEXT NOT NULL,
            progress REAL NOT NULL DEFAULT 0,
            duration REAL,
            synthesis_time REAL,
            error_message TEXT,
            created_at TEXT NOT NULL,
            queued_at TEXT,
            started_at TEXT,
            completed_at TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_until TEXT,
            webhook TEXT NOT NULL DEFAULT '{}'
        )
        """,
        "CREATE INDEX tasks_by_queue ON tasks (kind, status, priority_rank, created_at)",
        "CREATE INDEX tasks_by_created ON tasks (created_at)",
        "CREATE INDEX tasks_by_lease ON tasks (status, lease_until)",
    ),
    # Fencing tokens: the claim that holds a processing task's lease.
    ("ALTER TABLE tasks ADD COLUMN claim_id TEXT",),
    # Long-form renders in segment jobs: the plan's size, the stored segments (a JSON
    # array used as a set) and the claim of the one process assembling them.
    (
        "ALTER TABLE tasks ADD COLUMN segments_total INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN segments_done TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE tasks ADD COLUMN assembling_until TEXT",
    ),
)

_VOICE_COLUMNS = tuple(Voice.model_fields)
_TASK_COLUMNS = (*Task.model_fields, "priority_rank")
_JSON_COLUMNS = frozenset({"metadata", "webhook", "segments_done"})


def _iso(moment: datetime) -> str:
    """Fixed-width UTC text, so string order is time order."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"cannot store {type(value).__name__} as JSON")


def _to_column(name: str, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if name in _JSON_COLUMNS:
        return json.dumps(value, default=_json_default)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, datetime):
        return _iso(value)
    return value


def _row_values(row: sqlite3.Row, columns: Iterable[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in columns:
        value = row[name]
        if name in _JSON_COLUMNS and value is not None:
            value = json.loads(value)
        values[name] = value
    return values


def _voice(row: sqlite3.Row) -> Voice:
    return Voice.model_validate(_row_values(row, _VOICE_COLUMNS))


def _task(row: sqlite3.Row) -> Task:
    return Task.model_validate(_row_values(row, Task.model_fields))


def _assignments(
    changes: dict[str, Any], allowed: Sequence[str], key: str
) -> tuple[str, list[Any]]:
    """`SET a = ?, b = ?` for known columns only: names never come from users into SQL."""
    unknown = set(changes) - set(allowed)
    if unknown or key in changes:
        raise InvalidInput(f"cannot change field(s): {', '.join(sorted(unknown | {key}))}")
    changes = dict(changes)
    if "priority" in changes:
        changes["priority_rank"] = Priority(changes["priority"]).rank
    names = list(changes)
    clause = ", ".join(f"{name} = ?" for name in names)
    return clause, [_to_column(name, changes[name]) for name in names]


def _where(filters: dict[str, Any]) -> tuple[str, list[Any]]:
    present = {name: value for name, value in filters.items() if value is not None}
    if not present:
        return "", []
    clause = " AND ".join(f"{name} = ?" for name in present)
    return f"WHERE {clause}", [_to_column(name, value) for name, value in present.items()]


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the file's schema up to date in one transaction (a crash leaves the old one)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute("PRAGMA user_version").fetchone()[0]
        for version, statements in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class SqliteMetadataStore:
    """`MetadataStore` over a SQLite file (the default: nothing to install)."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        await self._call(lambda conn: None)  # opens and migrates on the store's thread

    async def close(self) -> None:
        if self._executor is None:
            return
        executor, self._executor = self._executor, None
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_connection)
        finally:
            executor.shutdown(wait=True)

    async def ping(self) -> None:
        await self._call(lambda conn: conn.execute("SELECT 1").fetchone())

    async def _call(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` on the store's thread, translating database failures."""
        if self._executor is None:
            raise BackendUnavailable("database unavailable: the store is not started")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._executor, functools.partial(self._with_connection, work)
            )
        except sqlite3.IntegrityError as exc:
            # A constraint refused the write: the data's answer, not an outage.
            raise Conflict(f"conflicts with stored data: {exc}") from exc
        except sqlite3.OperationalError as exc:
            # Locked past the busy timeout, disk full or unreadable, file gone: an outage.
            raise BackendUnavailable(f"database unavailable: {exc}") from exc
        except (sqlite3.DatabaseError, OSError) as exc:
            raise BackendUnavailable(f"database error: {exc}") from exc

    def _with_connection(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._open()
        return work(self._conn)

    def _open(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=10.0)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA busy_timeout = 10000")
            _migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- voices --------------------------------------------------------------------

    async def create_voice(self, voice: Voice) -> None:
        values = voice.model_dump()
        columns = ", ".join(_VOICE_COLUMNS)
        marks = ", ".join("?" for _ in _VOICE_COLUMNS)
        params = [_to_column(name, values[name]) for name in _VOICE_COLUMNS]
        sql = f"INSERT INTO voices ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        inserted = await self._call(lambda conn: conn.execute(sql, params).rowcount)
        if inserted == 0:
            raise VoiceAlreadyExists(voice.voice_id)

    async def get_voice(self, voice_id: str) -> Voice:
        row = await self._call(
            lambda conn: conn.execute(
                "SELECT * FROM voices WHERE voice_id = ?", (voice_id,)
            ).fetchone()
        )
        if row is None:
            raise VoiceNotFound(voice_id)
        return _voice(row)

    async def list_voices(
        self,
        *,
        voice_type: str | None = None,
        language: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Voice], int]:
        where, params = _where({"voice_type": voice_type, "language": language})

        def query(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], int]:
            total = conn.execute(f"SELECT COUNT(*) FROM voices {where}", params).fetchone()[0]
            rows = conn.execute(
                f"SELECT * FROM voices {where} ORDER BY created_at, voice_id LIMIT ? OFFSET ?",
                [*params, max(limit, 0), max(offset, 0)],
            ).fetchall()
            return rows, total

        rows, total = await self._call(query)
        return [_voice(row) for row in rows], total

    async def update_voice(self, voice_id: str, changes: dict[str, Any]) -> Voice:
        if not changes:
            return await self.get_voice(voice_id)
        clause, params = _assignments(changes, _VOICE_COLUMNS, "voice_id")
        row = await self._call(
            lambda conn: conn.execute(
                f"UPDATE voices SET {clause} WHERE voice_id = ? RETURNING *",
                [*params, voice_id],
            ).fetchone()
        )
        if row is None:
            raise VoiceNotFound(voice_id)
        return _voice(row)

    async def delete_voice(self, voice_id: str) -> None:
        deleted = await self._call(
            lambda conn: conn.execute("DELETE FROM voices WHERE voice_id = ?", (voice_id,)).rowcount
        )
        if deleted == 0:
            raise VoiceNotFound(voice_id)

    async def voice_stats(self) -> VoiceStats:
        def query(conn: sqlite3.Connection) -> VoiceStats:
            total, active, duration, size = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(is_active), 0), COALESCE(SUM(duration), 0.0),"
                " COALESCE(SUM(file_size), 0) FROM voices"
            ).fetchone()
            types = conn.execute(
                "SELECT voice_type, COUNT(*) FROM voices GROUP BY voice_type"
            ).fetchall()
            languages = conn.execute(
                "SELECT language, COUNT(*) FROM voices WHERE language IS NOT NULL GROUP BY language"
            ).fetchall()
            return VoiceStats(
                total_voices=total,
                active_voices=active,
                voice_types={name: count for name, count in types},
                languages={name: count for name, count in languages},
                total_duration=float(duration),
                total_size=int(size),
            )

        return await self._call(query)

    # --- tasks ---------------------------------------------------------------------

    async def create_task(self, task: Task) -> bool:
        values = task.model_dump()
        values["priority_rank"] = task.priority.rank
        columns = ", ".join(_TASK_COLUMNS)
        marks = ", ".join("?" for _ in _TASK_COLUMNS)
        params = [_to_column(name, values[name]) for name in _TASK_COLUMNS]
        sql = f"INSERT INTO tasks ({columns}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        inserted = await self._call(lambda conn: conn.execute(sql, params).rowcount)
        return inserted == 1

    async def get_task(self, task_id: str) -> Task:
        row = await self._call(
            lambda conn: conn.execute(
                "SELECT * FROM tasks WHERE task_id = ?", (task_id,)
            ).fetchone()
        )
        if row is None:
            raise TaskNotFound(task_id)
        return _task(row)

    async def list_tasks(
        self,
        *,
        kind: TaskKind | None = None,
        status: TaskStatus | None = None,
        priority: Priority | None = None,
        limit: int = 50,
    ) -> tuple[list[Task], int]:
        where, params = _where({"kind": kind, "status": status, "priority": priority})

        def query(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], int]:
            total = conn.execute(f"SELECT COUNT(*) FROM tasks {where}", params).fetchone()[0]
            rows = conn.execute(
                f"SELECT * FROM tasks {where} ORDER BY created_at DESC, task_id DESC LIMIT ?",
                [*params, max(limit, 0)],
            ).fetchall()
            return rows, total

        rows, total = await self._call(query)
        return [_task(row) for row in rows], total

    async def transition(
        self,
        task_id: str,
        expected: Iterable[TaskStatus],
        changes: dict[str, Any],
        *,
        claim_id: str | None = None,
        lease_expired_before: datetime | None = None,
    ) -> Task | None:
        allowed = [TaskStatus(status).value for status in expected]
        if not allowed:
            return None
        clause, params = _assignments(changes, _TASK_COLUMNS, "task_id")
        if not clause:
            clause, params = "status = status", []
        marks = ", ".join("?" for _ in allowed)
        conditions = [f"task_id = ? AND status IN ({marks})"]
        condition_params: list[Any] = [task_id, *allowed]
        if claim_id is not None:
            conditions.append("claim_id = ?")
            condition_params.append(claim_id)
        if lease_expired_before is not None:
            conditions.append("lease_until IS NOT NULL AND lease_until < ?")
            condition_params.append(_iso(lease_expired_before))
        # One statement: the check and the write cannot be separated by another writer.
        sql = f"UPDATE tasks SET {clause} WHERE {' AND '.join(conditions)} RETURNING *"
        row = await self._call(
            lambda conn: conn.execute(sql, [*params, *condition_params]).fetchone()
        )
        return None if row is None else _task(row)

    async def record_segment(self, task_id: str, index: int, lease_until: datetime) -> Task | None:
        finished = sorted(status.value for status in FINAL_STATUSES)
        marks = ", ".join("?" for _ in finished)
        # One statement: concurrent recorders each add their index to the set read in
        # the same write, so none is lost; progress only moves forward.
        added = (
            "(SELECT json_group_array(value) FROM (SELECT value FROM json_each(segments_done)"
            " UNION SELECT ? ORDER BY 1))"
        )
        sql = (
            f"UPDATE tasks SET segments_done = {added},"
            " lease_until = CASE WHEN status = ? THEN ? ELSE lease_until END,"
            " progress = CASE WHEN status = ? AND segments_total > 0 THEN"
            f" MAX(progress, MIN(0.99, CAST(json_array_length({added}) AS REAL)"
            " / segments_total)) ELSE progress END"
            f" WHERE task_id = ? AND status NOT IN ({marks}) RETURNING *"
        )
        processing = TaskStatus.processing.value
        params = [index, processing, _iso(lease_until), processing, index, task_id, *finished]
        row = await self._call(lambda conn: conn.execute(sql, params).fetchone())
        return None if row is None else _task(row)

    async def claim_assembly(self, task_id: str, now: datetime, until: datetime) -> Task | None:
        sql = (
            "UPDATE tasks SET assembling_until = ? WHERE task_id = ? AND status = ?"
            " AND (assembling_until IS NULL OR assembling_until < ?) RETURNING *"
        )
        params = [_iso(until), task_id, TaskStatus.processing.value, _iso(now)]
        row = await self._call(lambda conn: conn.execute(sql, params).fetchone())
        return None if row is None else _task(row)

    async def update_task(self, task_id: str, changes: dict[str, Any]) -> Task:
        if not changes:
            return await self.get_task(task_id)
        clause, params = _assignments(changes, _TASK_COLUMNS, "task_id")
        row = await self._call(
            lambda conn: conn.execute(
                f"UPDATE tasks SET {clause} WHERE task_id = ? RETURNING *", [*params, task_id]
            ).fetchone()
        )
        if row is None:
            raise TaskNotFound(task_id)
        return _task(row)

    async def delete_task(self, task_id: str) -> None:
        deleted = await self._call(
            lambda conn: conn.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,)).rowcount
        )
        if deleted == 0:
            raise TaskNotFound(task_id)

    async def pending_in_order(self, kind: TaskKind, limit: int) -> list[Task]:
        rows = await self._call(
            lambda conn: conn.execute(
                "SELECT * FROM tasks WHERE kind = ? AND status = ?"
                " ORDER BY priority_rank, created_at, task_id LIMIT ?",
                (kind.value, TaskStatus.pending.value, max(limit, 0)),
            ).fetchall()
        )
        return [_task(row) for row in rows]

    async def queued_tasks(self) -> list[Task]:
        queued = sorted(status.value for status in QUEUED_STATUSES)
        rows = await self._call(
            lambda conn: conn.execute(
                "SELECT * FROM tasks WHERE status IN (?, ?)"
                " ORDER BY priority_rank, queued_at, created_at, task_id",
                queued,
            ).fetchall()
        )
        return [_task(row) for row in rows]

    async def expired_leases(self, now: datetime) -> list[Task]:
        rows = await self._call(
            lambda conn: conn.execute(
                "SELECT * FROM tasks WHERE status = ? AND lease_until IS NOT NULL"
                " AND lease_until < ? ORDER BY lease_until",
                (TaskStatus.processing.value, _iso(now)),
            ).fetchall()
        )
        return [_task(row) for row in rows]

    async def count_tasks(self, kind: TaskKind | None = None) -> dict[str, dict[str, int]]:
        where, params = _where({"kind": kind})

        def query(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            by_status = conn.execute(
                f"SELECT status, COUNT(*) FROM tasks {where} GROUP BY status", params
            ).fetchall()
            by_priority = conn.execute(
                f"SELECT priority, COUNT(*) FROM tasks {where} GROUP BY priority", params
            ).fetchall()
            return {
                "status": {status.value: 0 for status in TaskStatus} | dict(by_status),
                "priority": {p.value: 0 for p in PRIORITY_ORDER} | dict(by_priority),
            }

        return await self._call(query)

    async def delete_finished_tasks_before(self, cutoff: datetime, limit: int) -> list[Task]:
        finished = sorted(status.value for status in FINAL_STATUSES)
        marks = ", ".join("?" for _ in finished)
        # One statement: a task is returned only if this call is the one that deleted it.
        sql = (
            "DELETE FROM tasks WHERE task_id IN (SELECT task_id FROM tasks"
            f" WHERE status IN ({marks}) AND completed_at IS NOT NULL AND completed_at < ?"
            " ORDER BY completed_at LIMIT ?) RETURNING *"
        )
        rows = await self._call(
            lambda conn: conn.execute(sql, [*finished, _iso(cutoff), max(limit, 0)]).fetchall()
        )
        return [_task(row) for row in rows]

    async def average_synthesis_time(self, kind: TaskKind | None = None) -> float | None:
        where, params = _where({"kind": kind, "status": TaskStatus.completed})
        average = await self._call(
            lambda conn: conn.execute(
                f"SELECT AVG(synthesis_time) FROM tasks {where} AND synthesis_time IS NOT NULL",
                params,
            ).fetchone()[0]
        )
        return None if average is None else float(average)
