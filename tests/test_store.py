"""The job store on SQLite and PostgreSQL: migrations, keys, jobs, claiming (also by racing processes), leases,
stage runs, cancel, events, figures."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text, update

from spaceport.jobs.models import Base, Job
from spaceport.jobs.store import JobLimitReached, Store, alembic_config, hash_key, open_store
from spaceport.workspace import SpaceportError

JOB_FIELDS = {"input_url": "s3://bucket/photos/", "steps": "full", "preset": "preview", "settings": {},
              "config": {"train": {"steps": 10}}, "workspace_url": "file:///tmp/ws"}


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = open_store(database_url)
    yield opened
    opened.close()


def make_job(store: Store, owner_id: int, **fields) -> Job:
    return store.create_job(owner_id, **{**JOB_FIELDS, **fields})


def age_heartbeat(store: Store, job_id: str, seconds: float) -> None:
    """Pretend the claimer last heartbeated ``seconds`` ago (no sleeping in tests)."""
    with store.engine.begin() as connection:
        connection.execute(update(Job).where(Job.id == job_id)
                           .values(heartbeat_at=datetime.now(UTC) - timedelta(seconds=seconds)))


# -- schema --------------------------------------------------------------------------------------------------


def test_migrations_make_exactly_the_models_schema(store: Store, database_url: str) -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert context.get_current_revision() == head
        assert compare_metadata(context, Base.metadata) == []
    open_store(database_url).close()  # a second start (another process) finds the schema up to date


def _open_and_count(database_url: str) -> int:
    store = open_store(database_url)
    count = sum(store.job_counts().values())
    store.close()
    return count


def test_processes_starting_together_on_a_new_database_migrate_it_once(database_url: str) -> None:
    if database_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(database_url, autocommit=True) as connection:
            connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        assert pool.map(_open_and_count, [database_url] * 3) == [0, 0, 0]


def test_sqlite_store_uses_wal_and_a_busy_timeout(tmp_path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'db' / 'spaceport.db'}")
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    store.close()


def test_memory_sqlite_is_refused_with_the_fix() -> None:
    with pytest.raises(SpaceportError, match="needs a SQLite file"):
        open_store("sqlite://")


# -- owners and keys -----------------------------------------------------------------------------------------


def test_api_keys_are_stored_hashed_and_resolve_to_their_owner(store: Store) -> None:
    alice = store.ensure_owner("alice")
    assert store.ensure_owner("alice").id == alice.id
    key = store.create_api_key(alice.id)
    assert key.startswith("sp_") and len(key) > 40
    with store.engine.connect() as connection:
        rows = connection.execute(text("SELECT key_hash, prefix FROM api_keys")).all()
    assert rows == [(hash_key(key), key[:10])]  # the key itself is nowhere in the database
    assert store.owner_for_key(key).name == "alice"
    assert store.owner_for_key(key + "x") is None
    assert store.owner_for_key("") is None
    with pytest.raises(SpaceportError, match="exists already"):
        store.create_owner("alice")


# -- jobs ----------------------------------------------------------------------------------------------------


def test_jobs_are_private_to_their_owner_and_listed_newest_first(store: Store) -> None:
    alice, bob = store.ensure_owner("alice"), store.ensure_owner("bob")
    created = [make_job(store, alice.id).id for _ in range(7)]
    other = make_job(store, bob.id)
    job = store.get_job(alice.id, created[0])
    assert job.state == "queued" and job.created_at.tzinfo is not None and job.config == JOB_FIELDS["config"]
    assert store.get_job(alice.id, other.id) is None
    assert store.get_job(None, other.id).owner_id == bob.id
    seen, cursor = [], None
    while True:
        page = store.list_jobs(alice.id, limit=3, cursor=cursor)
        seen += [job.id for job in page.jobs]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == created[::-1]
    assert [job.id for job in store.list_jobs(bob.id).jobs] == [other.id]
    with pytest.raises(SpaceportError, match="not one this server gave"):
        store.list_jobs(alice.id, cursor="garbage")


def test_per_owner_limit_counts_queued_and_running_jobs(store: Store) -> None:
    alice = store.ensure_owner("alice")
    first = make_job(store, alice.id, max_active=2)
    make_job(store, alice.id, max_active=2)
    with pytest.raises(JobLimitReached, match="limit per owner is 2"):
        make_job(store, alice.id, max_active=2)
    assert store.set_state(first.id, "failed", error="boom")
    make_job(store, alice.id, max_active=2)  # a finished job frees a place
    assert store.count_active_jobs(alice.id) == 2


# -- claiming ------------------------------------------------------------------------------------------------


def test_claim_takes_the_oldest_job_matching_the_worker_resources(store: Store) -> None:
    owner = store.ensure_owner("o")
    gpu_job = make_job(store, owner.id, resource="gpu", steps="train")
    cpu_job = make_job(store, owner.id, resource="cpu")
    assert store.queue_depth() == {"cpu": 1, "gpu": 1}
    claimed = store.claim_next_job("cpu-worker", resources=["cpu"])
    assert claimed.id == cpu_job.id and claimed.state == "running" and claimed.claimed_by == "cpu-worker"
    assert claimed.started_at is not None and claimed.heartbeat_at is not None
    assert store.claim_next_job("cpu-worker-2", resources=["cpu"]) is None
    assert store.claim_next_job("any").id == gpu_job.id
    assert store.claim_next_job("any") is None
    assert store.events_after(cpu_job.id)[-1].data == {"state": "running", "worker": "cpu-worker"}


def _claim_until_empty(database_url: str, worker_id: str) -> list[str]:
    store = open_store(database_url)
    claimed = []
    while (job := store.claim_next_job(worker_id)) is not None:
        claimed.append(job.id)
    store.close()
    return claimed


def test_racing_processes_claim_each_job_exactly_once(store: Store, database_url: str) -> None:
    owner = store.ensure_owner("o")
    jobs = {make_job(store, owner.id).id for _ in range(30)}
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.starmap(_claim_until_empty, [(database_url, f"worker-{i}") for i in range(3)])
    claimed = [job_id for result in results for job_id in result]
    assert sorted(claimed) == sorted(jobs)  # every job once, none twice
    assert {store.get_job(None, job_id).claimed_by for job_id in jobs} <= {"worker-0", "worker-1", "worker-2"}


def test_racing_threads_claim_one_given_job_once(store: Store) -> None:
    owner = store.ensure_owner("o")
    for _ in range(10):
        job = make_job(store, owner.id)
        barrier = threading.Barrier(4)
        winners: list[str] = []

        def claim(worker: str, job_id: str = job.id, barrier: threading.Barrier = barrier,
                  winners: list[str] = winners) -> None:
            barrier.wait()
            if store.claim_job(job_id, worker) is not None:
                winners.append(worker)

        threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1
        assert store.get_job(None, job.id).claimed_by == winners[0]


def test_a_dead_workers_job_is_requeued_and_resumed_elsewhere(store: Store) -> None:
    owner = store.ensure_owner("o")
    job = make_job(store, owner.id)
    store.claim_next_job("dead")
    run = store.start_stage_run(job.id, "sfm", worker_id="dead")
    assert store.heartbeat(job.id, "dead")
    assert store.claim_job(job.id, "other", stale_after_s=60) is None  # its claimer is alive
    assert store.requeue_stale(older_than_s=60) == []
    age_heartbeat(store, job.id, 120)
    assert store.requeue_stale(older_than_s=60) == [job.id]
    requeued = store.get_job(None, job.id)
    assert requeued.state == "queued" and requeued.claimed_by is None and requeued.started_at is not None
    assert store.stage_runs(job.id)[0].state == "lost"
    assert not store.heartbeat(job.id, "dead")  # the old worker learns it lost the job
    assert store.claim_next_job("new").id == job.id
    assert store.start_stage_run(job.id, "sfm", worker_id="new").attempt == run.attempt + 1


def test_a_redelivered_task_takes_over_a_stale_claim(store: Store) -> None:
    owner = store.ensure_owner("o")
    job = make_job(store, owner.id)
    store.claim_job(job.id, "killed")
    age_heartbeat(store, job.id, 600)
    taken = store.claim_job(job.id, "new", stale_after_s=300)
    assert taken is not None and taken.claimed_by == "new"
    assert not store.set_state(job.id, "succeeded", worker_id="killed")  # the old claimer cannot finish it
    assert store.set_state(job.id, "succeeded", worker_id="new")


def test_release_between_stages_lets_a_gpu_worker_continue(store: Store) -> None:
    owner = store.ensure_owner("o")
    job = make_job(store, owner.id)
    store.claim_next_job("cpu", resources=["cpu"])
    assert store.release_job(job.id, "cpu", resource="gpu")
    assert not store.release_job(job.id, "cpu")
    assert store.get_job(None, job.id).state == "running"
    assert store.claim_next_job("cpu", resources=["cpu"]) is None
    assert store.claim_next_job("gpu", resources=["gpu"]).id == job.id
    store.request_cancel(None, job.id)  # asked while a worker holds it: it ends when that worker lets go
    assert store.get_job(None, job.id).state == "running"
    assert store.release_job(job.id, "gpu", resource="cpu")
    assert store.get_job(None, job.id).state == "cancelled"


# -- progress, stages, states ----------------------------------------------------------------------------------


def test_stage_runs_progress_and_final_state(store: Store) -> None:
    owner = store.ensure_owner("o")
    job = make_job(store, owner.id)
    store.claim_next_job("w")
    run = store.start_stage_run(job.id, "train", worker_id="w", device="cuda:0")
    store.update_progress(job.id, stage="train", fraction=0.5, progress=0.6, eta_s=42.0, message="step 500",
                          metrics={"loss": 0.1}, worker_id="w")
    current = store.get_job(None, job.id)
    assert (current.stage, current.progress, current.eta_s, current.metrics) == ("train", 0.6, 42.0, {"loss": 0.1})
    ended = store.finish_stage_run(run.id, "succeeded", seconds=12.5, peak_memory_bytes=5 * 2**30,
                                   metrics={"psnr": 25.0})
    assert ended.seconds == 12.5 and ended.ended_at is not None
    assert store.stage_runs(job.id)[0].peak_memory_bytes == 5 * 2**30  # over 32 bits
    assert store.get_job(None, job.id).metrics == {"loss": 0.1, "train": {"psnr": 25.0}}
    assert store.set_state(job.id, "succeeded", worker_id="w")
    done = store.get_job(None, job.id)
    assert done.progress == 1.0 and done.finished_at is not None and done.claimed_by is None
    assert not store.set_state(job.id, "running")  # a final state is never left
    kinds = [(event.kind, event.stage) for event in store.events_after(job.id)]
    assert kinds == [("state", None), ("state", None), ("stage", "train"), ("progress", "train"),
                     ("stage", "train"), ("state", None)]
    assert store.events_after(job.id)[-1].data == {"state": "succeeded", "error": None}
    stats = store.stage_stats()
    assert [(s.stage, s.state, s.count, s.seconds_sum) for s in stats] == [("train", "succeeded", 1, 12.5)]
    assert store.job_counts() == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0}


def test_cancel_is_immediate_for_a_waiting_job_and_flagged_for_a_running_one(store: Store) -> None:
    owner, other = store.ensure_owner("o"), store.ensure_owner("other")
    waiting = make_job(store, owner.id)
    assert store.request_cancel(other.id, waiting.id) is None
    assert store.request_cancel(owner.id, waiting.id).state == "cancelled"
    running = make_job(store, owner.id)
    store.claim_next_job("w")
    flagged = store.request_cancel(owner.id, running.id)
    assert flagged.state == "running" and flagged.cancel_requested and store.is_cancel_requested(running.id)
    assert store.set_state(running.id, "cancelled", worker_id="w")
    # a cancel asked of a job whose worker then died ends cancelled, not queued again
    third = make_job(store, owner.id)
    store.claim_next_job("w2")
    store.request_cancel(owner.id, third.id)
    age_heartbeat(store, third.id, 100)
    store.requeue_stale(older_than_s=10)
    assert store.get_job(None, third.id).state == "cancelled"


def test_events_resume_after_an_id_in_order(store: Store) -> None:
    owner = store.ensure_owner("o")
    job, other = make_job(store, owner.id), make_job(store, owner.id)
    ids = [store.add_event(job.id, "log", message=f"line {i}") for i in range(5)]
    store.add_event(other.id, "log", message="elsewhere")
    assert ids == sorted(ids)
    after = store.events_after(job.id, ids[1])
    assert [event.message for event in after] == ["line 2", "line 3", "line 4"]
    assert store.events_after(job.id, ids[-1]) == []
    with pytest.raises(ValueError, match="event kind"):
        store.add_event(job.id, "gossip")
    with pytest.raises(SpaceportError, match="does not exist"):
        store.add_event("nope", "log")
