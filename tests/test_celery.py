"""Celery on Redis with real processes: `spaceport serve` (API only), a `spaceport worker --queues cpu` and a
`--queues gpu`, PostgreSQL as the job store, moto S3 as the storage (the job reads its photos from s3:// and its
workspace, SOG included, lives there), aiosmtpd and the webhook receiver for the notifications.

The gpu worker is killed with its whole process group (the machine is gone) once training has passed a checkpoint
that reached S3; a new gpu worker with an empty data folder (another machine) takes the stage over and training
resumes from that checkpoint.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spaceport.jobs.celery_app import CeleryDispatcher, Reaper, make_celery
from spaceport.jobs.store import open_store
from spaceport.jobs.supervise import WorkerContext
from spaceport.settings import Settings
from tests.databases import empty_postgres
from tests.processes import PREVIEW_SETTINGS, Api, ServiceProcess, running, service_env, train_step
from tests.servers import S3Server, SmtpServer, WebhookReceiver

REDIS_URL = "redis://127.0.0.1:6379/7"  # a database of its own (tests/databases.py: redis_url)
SECRET = "celery-test-secret"
EMAIL = "scale@example.org"


def queued_tasks(client: Any, queue: str) -> list[tuple[str, str]]:
    """(job id, stage) of the tasks waiting in a Celery queue (kombu keeps a Redis list per queue)."""
    tasks = []
    for raw in client.lrange(queue, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "spaceport.run_stage"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        tasks.append(tuple(args))
    return tasks


def test_reaper_sends_lost_and_orphaned_work_once(tmp_path: Path, redis_url: str) -> None:
    import redis

    settings = Settings(data_dir=tmp_path, broker_url=redis_url, stale_after_s=30)
    store = open_store(settings.resolved_database_url)
    owner = store.ensure_owner("scale")
    fields = {"input_url": "s3://bucket/photos/", "preset": "preview", "settings": {}, "config": {},
              "workspace_url": (tmp_path / "ws").as_uri()}
    lost = store.create_job(owner.id, steps="full", **fields)  # recorded, but its first task never reached Redis
    orphaned = store.create_job(owner.id, steps="compress", **fields)
    ended = subprocess.Popen(["true"])
    ended.wait()
    store.claim_job(orphaned.id, f"worker-cpu@{socket.gethostname()}:{ended.pid}:dead00")  # its worker is gone
    dispatcher = CeleryDispatcher(make_celery(settings), settings)
    reaper = Reaper(WorkerContext(settings, store, "api@test:1:abc"), dispatcher, lost_dispatch_after_s=0)
    client = redis.Redis.from_url(redis_url)
    try:
        assert set(reaper.reap_once()) == {lost.id, orphaned.id}
        assert sorted(queued_tasks(client, "cpu")) == sorted([(lost.id, "ingest"), (orphaned.id, "compress")])
        assert store.get_job(None, orphaned.id).state == "queued"
        assert reaper.reap_once() == []  # their tasks are pending now: not sent twice
        assert len(queued_tasks(client, "cpu")) == 2
    finally:
        client.close()
        dispatcher.close()
        store.close()


def test_celery_workers_run_a_job_from_s3_and_a_new_gpu_worker_resumes_training(
        tmp_path: Path, redis_url: str, postgres_url: str, s3_session: S3Server, smtp_session: SmtpServer,
        webhook_session: WebhookReceiver, monstree_small: Path) -> None:
    empty_postgres(postgres_url)
    bucket = s3_session.make_bucket("celery")
    for photo in sorted(monstree_small.glob("*.jpg")):
        s3_session.put_object(bucket, f"photos/{photo.name}", photo.read_bytes())
    store = open_store(postgres_url)
    key = store.create_api_key(store.ensure_owner("scale").id)
    webhook_session.reset()
    webhook_session.secret = SECRET
    env = {**service_env(broker_url=redis_url, database_url=postgres_url, storage_url=f"s3://{bucket}/spaceport",
                         smtp_host=smtp_session.host, smtp_port=smtp_session.port, webhook_secret=SECRET,
                         heartbeat_s=1, stale_after_s=10), **s3_session.env}
    api = ServiceProcess(["serve", "--port", "0", "--data", str(tmp_path / "api")], env, tmp_path / "api.log")
    cpu = ServiceProcess(["worker", "--queues", "cpu"], {**env, "SPACEPORT_DATA_DIR": str(tmp_path / "cpu")},
                         tmp_path / "cpu.log")
    gpu = ServiceProcess(["worker", "--queues", "gpu"], {**env, "SPACEPORT_DATA_DIR": str(tmp_path / "gpu1")},
                         tmp_path / "gpu1.log")
    new_gpu = ServiceProcess(["worker", "--queues", "gpu"], {**env, "SPACEPORT_DATA_DIR": str(tmp_path / "gpu2")},
                             tmp_path / "gpu2.log")
    with running(api, cpu, gpu, new_gpu):
        started = time.monotonic()
        api.start(wait_for_url=True)
        cpu.start()
        gpu.start()
        client = Api(api.url or "", key)
        job = client.submit({"input_url": f"s3://{bucket}/photos/", "preset": "preview",
                             "settings": PREVIEW_SETTINGS, "notify": {"email": EMAIL,
                                                                      "webhook_url": webhook_session.url}})
        checkpoints = f"spaceport/{job['id']}/train/ckpt/"
        running_job = client.wait_for(job["id"], lambda j: j["stage"] == "train" and train_step(j) >= 100
                                      and s3_session.keys(bucket, checkpoints), "a checkpoint uploaded to S3",
                                      log=gpu)
        uploaded = s3_session.keys(bucket, checkpoints)
        gpu.kill(with_descendants=True)
        killed, killed_at = time.monotonic(), datetime.now(UTC)
        new_gpu.start()
        final = client.wait_final(job["id"], log=new_gpu)
        finished = time.monotonic()
        client.close()

    assert final["state"] == "succeeded", f"{final['error']}\n--- cpu ---\n{cpu.tail()}\n--- gpu2 ---\n{new_gpu.tail()}"
    resumed = final["metrics"]["train"]["resumed_from_step"]
    # killed with everything it ran, the worker wrote no last checkpoint: the new one resumed from a periodic one
    # (every 50 steps) that had reached S3
    assert resumed >= 50 and resumed % 50 == 0
    runs = store.stage_runs(job["id"])
    train_runs = [run for run in runs if run.stage == "train"]
    restarted_after = (train_runs[-1].started_at - killed_at).total_seconds()
    print(f"\ncelery job: gpu worker killed at train step {train_step(running_job):.0f} (S3 had {uploaded}); "
          f"train started again {restarted_after:.0f} s after the kill (the new worker was started with it), "
          f"resumed from step {resumed}; kill to success {finished - killed:.0f} s, {finished - started:.0f} s in "
          "all")
    assert [(run.stage, run.state) for run in runs] == [
        ("ingest", "succeeded"), ("sfm", "succeeded"), ("train", "lost"), ("train", "succeeded"),
        ("compress", "succeeded"), ("report", "succeeded")]
    assert {run.worker.split("@")[0] for run in runs if run.stage != "train"} == {"worker-cpu"}
    assert [run.worker.split("@")[0] for run in train_runs] == ["worker-gpu", "worker-gpu"]
    assert train_runs[0].worker != train_runs[1].worker
    # the SOG was written to the bucket, and the API serves it from there
    sog = s3_session.get_object(bucket, f"spaceport/{job['id']}/compress/scene.sog")
    assert sog[:2] == b"PK" and any(item["name"] == "scene.sog" for item in final["artifacts"])
    assert not (tmp_path / "api" / "workspaces").exists()
    mails = smtp_session.mails_about(job["id"])
    assert [mail.message["Subject"] for mail in mails] == [f"Spaceport job {job['id']} succeeded"]
    hooks = webhook_session.hooks_about(job["id"])
    assert hooks[0].verified is True and hooks[0].json()["event"] == "job.succeeded"
    store.close()
