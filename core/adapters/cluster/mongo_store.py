"""The cluster repository: voices and tasks in MongoDB through PyMongo's async API.

The client belongs to the event loop that created it, so it is made in `start()` and
closed in `close()` (the app's lifespan). Every timeout comes from one number, so an
outage turns into `BackendUnavailable` within that many seconds instead of a hang, and
the same store object recovers by itself when the server is back. A database that
cannot be used at start (down, or refusing the credentials) does not stop the process:
the indexes are created by the first call that reaches it, every call until then
answers `BackendUnavailable` with the reason, and `/health` says so.

Every driver error is translated here (`_database_errors`): a duplicate key is a
`Conflict`, anything else (no server, authentication or authorization refused, a bad
URL option, a failed command) is `BackendUnavailable` with a one-line reason.

Tasks carry a numeric `priority_rank` next to `priority`, so the database sorts by
priority without knowing the names.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

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

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "cosyvoice"
# Server codes that mean "these credentials are not let in / not allowed to do this".
AUTHENTICATION_FAILED = frozenset({18, 11})  # AuthenticationFailed, UserNotFound
UNAUTHORIZED = frozenset({13})
_NO_ID = {"_id": False}
_VOICE_FIELDS = frozenset(Voice.model_fields)
_TASK_FIELDS = frozenset(Task.model_fields)
_QUEUE_ORDER = [("priority_rank", ASCENDING), ("queued_at", ASCENDING), ("created_at", ASCENDING)]


@contextmanager
def _database_errors() -> Iterator[None]:
    """Translate every driver error at the edge: nothing from pymongo leaves this module."""
    try:
        yield
    except DuplicateKeyError as exc:
        raise Conflict(f"conflicts with stored data: {_summary(exc)}") from exc
    except PyMongoError as exc:
        raise BackendUnavailable(f"database unavailable: {database_problem(exc)}") from exc


def database_problem(exc: PyMongoError) -> str:
    """One line saying what is wrong, in words an operator can act on."""
    summary = _summary(exc)
    code = exc.code if isinstance(exc, OperationFailure) else None
    if code in AUTHENTICATION_FAILED or (
        code is None and "authentication failed" in summary.lower()
    ):
        return f"authentication failed (check the user and password in DATABASE_URL): {summary}"
    if code in UNAUTHORIZED:
        return f"the database user lacks a permission (grant readWrite): {summary}"
    if isinstance(exc, ConfigurationError):
        return f"DATABASE_URL cannot be used: {summary}"
    if isinstance(exc, ConnectionFailure):
        return summary  # no server answered: selection, reconnects, network timeouts
    return f"{type(exc).__name__}: {summary}"


def _summary(exc: BaseException) -> str:
    # The driver's message carries its whole topology description or the server's full
    # reply: keep the first line.
    text = str(exc).split(", Timeout:")[0].split(", full error:")[0]
    return text.split("\n")[0][:200]


def _bson(value: Any) -> Any:
    """Domain values as BSON understands them: enums by value, models as documents."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return _bson(value.model_dump())
    if isinstance(value, Mapping):
        return {str(key): _bson(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_bson(item) for item in value]
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _changes(changes: dict[str, Any], allowed: frozenset[str], key: str) -> dict[str, Any]:
    unknown = set(changes) - allowed
    if unknown or key in changes:
        raise InvalidInput(f"cannot change field(s): {', '.join(sorted(unknown | {key}))}")
    document = {name: _bson(value) for name, value in changes.items()}
    if "priority" in changes:
        document["priority_rank"] = Priority(changes["priority"]).rank
    return document


def _filters(**conditions: Any) -> dict[str, Any]:
    return {name: _bson(value) for name, value in conditions.items() if value is not None}


class MongoMetadataStore:
    """`MetadataStore` over MongoDB (any server speaking its wire protocol)."""

    def __init__(self, url: str, *, timeout: float) -> None:
        self._url = url
        self._timeout_ms = max(int(timeout * 1000), 1)
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._db: AsyncDatabase[dict[str, Any]] | None = None
        self._indexed = False

    # --- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        with _database_errors():  # a URL the driver cannot parse fails the start at once
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                self._url,
                tz_aware=True,
                serverSelectionTimeoutMS=self._timeout_ms,
                connectTimeoutMS=self._timeout_ms,
                socketTimeoutMS=self._timeout_ms,
                appname="cosyvoice",
            )
            database = client.get_default_database(default=DEFAULT_DATABASE)
        self._client, self._db = client, database
        try:
            async with self._using():
                pass
        except BackendUnavailable as exc:
            log.warning("%s; every call retries until the database can be used", exc.detail)

    async def close(self) -> None:
        client, self._client, self._db = self._client, None, None
        self._indexed = False
        if client is not None:
            await client.close()

    async def ping(self) -> None:
        async with self._using():
            await self._database.command("ping")

    @asynccontextmanager
    async def _using(self) -> AsyncIterator[None]:
        """Around every call: the indexes exist first, and driver errors are translated."""
        with _database_errors():
            if not self._indexed:
                await self._create_indexes()
            yield

    async def _create_indexes(self) -> None:
        database = self._database
        await database.voices.create_index("voice_id", unique=True)
        await database.voices.create_index([("created_at", ASCENDING)])
        await database.tasks.create_index("task_id", unique=True)
        await database.tasks.create_index(
            [
                ("kind", ASCENDING),
                ("status", ASCENDING),
                ("priority_rank", ASCENDING),
                ("created_at", ASCENDING),
            ]
        )
        await database.tasks.create_index([("created_at", DESCENDING)])
        await database.tasks.create_index([("status", ASCENDING), ("completed_at", ASCENDING)])
        await database.tasks.create_index([("status", ASCENDING), ("lease_until", ASCENDING)])
        await self._migrate()
        self._indexed = True

    async def _migrate(self) -> None:
        """Bring documents written by earlier versions up to the current fields.

        Tasks written before claims had fencing tokens get `claim_id: null`, so every
        task has the field the compare-and-sets match on. Idempotent: once done, the
        update matches nothing.
        """
        await self._database.tasks.update_many(
            {"claim_id": {"$exists": False}}, {"$set": {"claim_id": None}}
        )

    @property
    def _database(self) -> AsyncDatabase[dict[str, Any]]:
        if self._db is None:
            raise BackendUnavailable("database unavailable: the store is not started")
        return self._db

    @property
    def _voices(self) -> AsyncCollection[dict[str, Any]]:
        return self._database.voices

    @property
    def _tasks(self) -> AsyncCollection[dict[str, Any]]:
        return self._database.tasks

    # --- voices --------------------------------------------------------------------

    async def create_voice(self, voice: Voice) -> None:
        async with self._using():
            try:
                await self._voices.insert_one(_bson(voice))
            except DuplicateKeyError:
                raise VoiceAlreadyExists(voice.voice_id) from None

    async def get_voice(self, voice_id: str) -> Voice:
        async with self._using():
            document = await self._voices.find_one({"voice_id": voice_id}, _NO_ID)
        if document is None:
            raise VoiceNotFound(voice_id)
        return Voice.model_validate(document)

    async def list_voices(
        self,
        *,
        voice_type: str | None = None,
        language: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[Voice], int]:
        query = _filters(voice_type=voice_type, language=language)
        async with self._using():
            total = await self._voices.count_documents(query)
            cursor = (
                self._voices.find(query, _NO_ID)
                .sort([("created_at", ASCENDING), ("voice_id", ASCENDING)])
                .skip(max(offset, 0))
                .limit(max(limit, 0))
            )
            documents = await cursor.to_list() if limit > 0 else []
        return [Voice.model_validate(document) for document in documents], total

    async def update_voice(self, voice_id: str, changes: dict[str, Any]) -> Voice:
        if not changes:
            return await self.get_voice(voice_id)
        async with self._using():
            document = await self._voices.find_one_and_update(
                {"voice_id": voice_id},
                {"$set": _changes(changes, _VOICE_FIELDS, "voice_id")},
                projection=_NO_ID,
                return_document=ReturnDocument.AFTER,
            )
        if document is None:
            raise VoiceNotFound(voice_id)
        return Voice.model_validate(document)

    async def delete_voice(self, voice_id: str) -> None:
        async with self._using():
            result = await self._voices.delete_one({"voice_id": voice_id})
        if result.deleted_count == 0:
            raise VoiceNotFound(voice_id)

    async def voice_stats(self) -> VoiceStats:
        pipeline: list[dict[str, Any]] = [
            {
                "$facet": {
                    "totals": [
                        {
                            "$group": {
                                "_id": None,
                                "total": {"$sum": 1},
                                "active": {"$sum": {"$cond": ["$is_active", 1, 0]}},
                                "duration": {"$sum": "$duration"},
                                "size": {"$sum": "$file_size"},
                            }
                        }
                    ],
                    "types": [{"$group": {"_id": "$voice_type", "n": {"$sum": 1}}}],
                    "languages": [
                        {"$match": {"language": {"$ne": None}}},
                        {"$group": {"_id": "$language", "n": {"$sum": 1}}},
                    ],
                }
            }
        ]
        async with self._using():
            cursor = await self._voices.aggregate(pipeline)
            (result,) = await cursor.to_list()
        totals = result["totals"][0] if result["totals"] else {}
        return VoiceStats(
            total_voices=totals.get("total", 0),
            active_voices=totals.get("active", 0),
            voice_types={row["_id"]: row["n"] for row in result["types"]},
            languages={row["_id"]: row["n"] for row in result["languages"]},
            total_duration=float(totals.get("duration", 0.0)),
            total_size=int(totals.get("size", 0)),
        )

    # --- tasks ---------------------------------------------------------------------

    async def create_task(self, task: Task) -> bool:
        document = _bson(task)
        document["priority_rank"] = task.priority.rank
        async with self._using():
            try:
                await self._tasks.insert_one(document)
            except DuplicateKeyError:
                return False
        return True

    async def get_task(self, task_id: str) -> Task:
        async with self._using():
            document = await self._tasks.find_one({"task_id": task_id}, _NO_ID)
        if document is None:
            raise TaskNotFound(task_id)
        return Task.model_validate(document)

    async def list_tasks(
        self,
        *,
        kind: TaskKind | None = None,
        status: TaskStatus | None = None,
        priority: Priority | None = None,
        limit: int = 50,
    ) -> tuple[list[Task], int]:
        query = _filters(kind=kind, status=status, priority=priority)
        async with self._using():
            total = await self._tasks.count_documents(query)
            documents = (
                await self._tasks.find(query, _NO_ID)
                .sort([("created_at", DESCENDING), ("task_id", DESCENDING)])
                .limit(limit)
                .to_list()
                if limit > 0
                else []
            )
        return [Task.model_validate(document) for document in documents], total

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
        update = _changes(changes, _TASK_FIELDS, "task_id")
        query: dict[str, Any] = {"task_id": task_id, "status": {"$in": allowed}}
        if claim_id is not None:
            query["claim_id"] = claim_id
        if lease_expired_before is not None:
            query["lease_until"] = {"$ne": None, "$lt": _bson(lease_expired_before)}
        async with self._using():
            document = await self._tasks.find_one_and_update(
                query,
                {"$set": update} if update else {"$set": {"task_id": task_id}},
                projection=_NO_ID,
                return_document=ReturnDocument.AFTER,
            )
        return None if document is None else Task.model_validate(document)

    async def record_segment(self, task_id: str, index: int, lease_until: datetime) -> Task | None:
        finished = [status.value for status in FINAL_STATUSES]
        async with self._using():
            # $addToSet is atomic per document: concurrent recorders never lose an index.
            document = await self._tasks.find_one_and_update(
                {"task_id": task_id, "status": {"$nin": finished}},
                {"$addToSet": {"segments_done": index}},
                projection=_NO_ID,
                return_document=ReturnDocument.AFTER,
            )
            if document is None:
                return None
            total = document.get("segments_total") or 0
            if document.get("status") != TaskStatus.processing.value or total <= 0:
                return Task.model_validate(document)
            progress = min(len(document["segments_done"]) / total, 0.99)
            renewed = await self._tasks.find_one_and_update(
                {"task_id": task_id, "status": TaskStatus.processing.value},
                {"$max": {"progress": progress}, "$set": {"lease_until": _bson(lease_until)}},
                projection=_NO_ID,
                return_document=ReturnDocument.AFTER,
            )
        return Task.model_validate(renewed or document)

    async def claim_assembly(self, task_id: str, now: datetime, until: datetime) -> Task | None:
        query = {
            "task_id": task_id,
            "status": TaskStatus.processing.value,
            "$or": [{"assembling_until": None}, {"assembling_until": {"$lt": _bson(now)}}],
        }
        async with self._using():
            document = await self._tasks.find_one_and_update(
                query,
                {"$set": {"assembling_until": _bson(until)}},
                projection=_NO_ID,
                return_document=ReturnDocument.AFTER,
            )
        return None if document is None else Task.model_validate(document)

    async def update_task(self, task_id: str, changes: dict[str, Any]) -> Task:
        if not changes:
            return await self.get_task(task_id)
        async with self._using():
            document = await self._tasks.find_one_and_update(
                {"task_id": task_id},
                {"$set": _changes(changes, _TASK_FIELDS, "task_id")},
                projection=_NO_ID,
                return_document=ReturnDocument.AFTER,
            )
        if document is None:
            raise TaskNotFound(task_id)
        return Task.model_validate(document)

    async def delete_task(self, task_id: str) -> None:
        async with self._using():
            result = await self._tasks.delete_one({"task_id": task_id})
        if result.deleted_count == 0:
            raise TaskNotFound(task_id)

    async def pending_in_order(self, kind: TaskKind, limit: int) -> list[Task]:
        if limit <= 0:
            return []
        query = _filters(kind=kind, status=TaskStatus.pending)
        async with self._using():
            documents = (
                await self._tasks.find(query, _NO_ID)
                .sort([("priority_rank", ASCENDING), ("created_at", ASCENDING)])
                .limit(limit)
                .to_list()
            )
        return [Task.model_validate(document) for document in documents]

    async def queued_tasks(self) -> list[Task]:
        query = {"status": {"$in": sorted(status.value for status in QUEUED_STATUSES)}}
        async with self._using():
            documents = await self._tasks.find(query, _NO_ID).sort(_QUEUE_ORDER).to_list()
        return [Task.model_validate(document) for document in documents]

    async def expired_leases(self, now: datetime) -> list[Task]:
        query = {
            "status": TaskStatus.processing.value,
            "lease_until": {"$ne": None, "$lt": _bson(now)},
        }
        async with self._using():
            documents = (
                await self._tasks.find(query, _NO_ID).sort("lease_until", ASCENDING).to_list()
            )
        return [Task.model_validate(document) for document in documents]

    async def count_tasks(self, kind: TaskKind | None = None) -> dict[str, dict[str, int]]:
        pipeline: list[dict[str, Any]] = [
            {"$match": _filters(kind=kind)},
            {
                "$facet": {
                    "status": [{"$group": {"_id": "$status", "n": {"$sum": 1}}}],
                    "priority": [{"$group": {"_id": "$priority", "n": {"$sum": 1}}}],
                }
            },
        ]
        async with self._using():
            cursor = await self._tasks.aggregate(pipeline)
            (result,) = await cursor.to_list()
        return {
            "status": {status.value: 0 for status in TaskStatus}
            | {row["_id"]: row["n"] for row in result["status"]},
            "priority": {priority.value: 0 for priority in PRIORITY_ORDER}
            | {row["_id"]: row["n"] for row in result["priority"]},
        }

    async def delete_finished_tasks_before(self, cutoff: datetime, limit: int) -> list[Task]:
        if limit <= 0:
            return []
        finished = sorted(status.value for status in FINAL_STATUSES)
        query = {"status": {"$in": finished}, "completed_at": {"$ne": None, "$lt": _bson(cutoff)}}
        async with self._using():
            documents = (
                await self._tasks.find(query, _NO_ID)
                .sort("completed_at", ASCENDING)
                .limit(limit)
                .to_list()
            )
            ids = [document["task_id"] for document in documents]
            if ids:
                await self._tasks.delete_many({"task_id": {"$in": ids}, **query})
        return [Task.model_validate(document) for document in documents]

    async def average_synthesis_time(self, kind: TaskKind | None = None) -> float | None:
        match = _filters(kind=kind, status=TaskStatus.completed)
        match["synthesis_time"] = {"$ne": None}
        pipeline: list[dict[str, Any]] = [
            {"$match": match},
            {"$group": {"_id": None, "average": {"$avg": "$synthesis_time"}}},
        ]
        async with self._using():
            cursor = await self._tasks.aggregate(pipeline)
            rows = await cursor.to_list()
        if not rows or rows[0]["average"] is None:
            return None
        return float(rows[0]["average"])
