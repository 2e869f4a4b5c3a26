"""Fenced leases, the same on every repository: a claim's writes hold only while the task
still holds that claim, and recovery takes only leases that ran out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from core.domain import TaskStatus, utcnow
from core.ports import MetadataStore
from core.services.endings import ending_changes
from tests.contract.conftest import make_task

S = TaskStatus


def token() -> str:
    return uuid.uuid4().hex


async def claimed(store: MetadataStore, claim: str, *, lease: timedelta) -> str:
    """A processing task held by `claim`, its lease ending `lease` from now."""
    task = make_task(status=S.registered)
    await store.create_task(task)
    taken = await store.transition(
        task.task_id,
        [S.registered],
        {"status": S.processing, "claim_id": claim, "lease_until": utcnow() + lease},
    )
    assert taken is not None and taken.claim_id == claim
    return task.task_id


async def test_writes_under_the_claim_pass_and_a_stale_claim_is_refused(
    metadata_store: MetadataStore,
) -> None:
    first, second = token(), token()
    task_id = await claimed(metadata_store, first, lease=timedelta(minutes=5))
    renewed = await metadata_store.transition(
        task_id, [S.processing], {"progress": 0.5}, claim_id=first
    )
    assert renewed is not None and renewed.progress == 0.5

    # The lease runs out and another worker retakes the task under a new claim.
    await metadata_store.update_task(task_id, {"lease_until": utcnow() - timedelta(seconds=1)})
    retaken = await metadata_store.transition(
        task_id,
        [S.processing],
        {"claim_id": second, "lease_until": utcnow() + timedelta(minutes=5)},
        lease_expired_before=utcnow(),
    )
    assert retaken is not None and retaken.claim_id == second

    # Every write of the first claim is refused now and changes nothing.
    task = await metadata_store.get_task(task_id)
    stale = [
        {"progress": 0.9, "lease_until": utcnow() + timedelta(minutes=9)},  # progress, renew
        ending_changes(task, S.completed, progress=1.0),  # complete
        ending_changes(task, S.failed, error_message="stale"),  # fail
        {"status": S.registered, "claim_id": None, "lease_until": None},  # release
    ]
    for changes in stale:
        assert (
            await metadata_store.transition(task_id, [S.processing], changes, claim_id=first)
            is None
        )
    unchanged = await metadata_store.get_task(task_id)
    assert unchanged.status is S.processing and unchanged.claim_id == second
    assert unchanged.progress == 0.5  # the stale progress write did not land

    # The holder of the claim ends it; the ending clears the claim and the lease.
    done = await metadata_store.transition(
        task_id, [S.processing], ending_changes(task, S.completed, progress=1.0), claim_id=second
    )
    assert done is not None and done.status is S.completed
    assert done.claim_id is None and done.lease_until is None and done.completed_at is not None


async def test_a_live_lease_is_not_retaken(metadata_store: MetadataStore) -> None:
    owner = token()
    task_id = await claimed(metadata_store, owner, lease=timedelta(minutes=5))
    assert (
        await metadata_store.transition(
            task_id, [S.processing], {"claim_id": token()}, lease_expired_before=utcnow()
        )
        is None
    )
    assert (await metadata_store.get_task(task_id)).claim_id == owner


async def test_recovery_takes_only_expired_leases_and_clears_the_claim(
    metadata_store: MetadataStore,
) -> None:
    expired = await claimed(metadata_store, token(), lease=timedelta(seconds=-5))
    alive = await claimed(metadata_store, token(), lease=timedelta(minutes=5))
    found = [t.task_id for t in await metadata_store.expired_leases(utcnow())]
    assert expired in found and alive not in found
    for task_id in (expired, alive):
        back = await metadata_store.transition(
            task_id,
            [S.processing],
            {"status": S.registered, "claim_id": None, "lease_until": None},
            lease_expired_before=utcnow(),
        )
        assert (back is not None) is (task_id == expired)
    requeued = await metadata_store.get_task(expired)
    assert requeued.status is S.registered and requeued.claim_id is None
    assert requeued.lease_until is None
    assert (await metadata_store.get_task(alive)).status is S.processing


async def test_of_two_racing_retakes_one_wins(metadata_store: MetadataStore) -> None:
    task_id = await claimed(metadata_store, token(), lease=timedelta(seconds=-5))
    claims = [token() for _ in range(4)]

    async def retake(claim: str) -> bool:
        won = await metadata_store.transition(
            task_id,
            [S.processing],
            {"claim_id": claim, "lease_until": utcnow() + timedelta(minutes=5)},
            lease_expired_before=utcnow(),
        )
        return won is not None

    results = await asyncio.gather(*(retake(claim) for claim in claims))
    assert sum(results) == 1
    winner = claims[results.index(True)]
    assert (await metadata_store.get_task(task_id)).claim_id == winner
