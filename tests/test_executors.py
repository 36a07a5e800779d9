"""The embedded worker of `spaceport serve`, as a real process on real photos: every step selection through the
API, /start-job, a serve killed mid-training and restarted (training resumes from its checkpoint), cancel of a
running stage, and the completion e-mail (aiosmtpd) and signed webhook.

The jobs share one serve process and run one after the other; the full job's workspace feeds the later ones
(its COLMAP model and photos for steps=train, its PLY for steps=compress). Timings are printed, never asserted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from spaceport.jobs.events import JobCancelled, JobProgress, StageReporter, job_progress_span
from spaceport.jobs.store import Store, open_store
from tests.processes import (
    PREVIEW_SETTINGS,
    Api,
    ServiceProcess,
    service_env,
    stage_processes,
    train_step,
    wait_until,
)
from tests.servers import SmtpServer, WebhookReceiver

SECRET = "executor-test-secret"
EMAIL = "crew@example.org"


# -- progress into the store (no server) ------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_stage_progress_is_weighted_throttled_and_raises_on_cancel(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'spaceport.db'}")
    owner = store.ensure_owner("crew")
    job = store.create_job(owner.id, input_url="s3://bucket/photos/", steps="full", preset="preview", settings={},
                           config={}, workspace_url=(tmp_path / "ws").as_uri())
    clock = FakeClock()
    reporter = StageReporter(store, job.id, "full", "train", "w", clock=clock)
    start, share = job_progress_span("full", "train")
    assert (start, share) == pytest.approx((5 / 14.5, 8 / 14.5))  # ingest 1 + sfm 4 before; train 8 of 14.5
    progress = JobProgress(reporter)
    with progress.task("train", total=300) as task:
        clock.now += 5
        task.update(completed=150, loss=0.25)  # half of train, 5 s after the start
        task.update(completed=160)  # within a second of the last: not recorded
        saved = store.get_job(None, job.id)
        assert saved.progress == pytest.approx(start + share / 2, abs=1e-3)
        assert saved.eta_s == pytest.approx(5 * (1 - saved.progress) / (share / 2), rel=0.01)
        assert saved.metrics["train"] == {"task": "train", "completed": 150, "total": 300, "loss": 0.25}
        progress_events = [e for e in store.events_after(job.id) if e.kind == "progress"]
        assert [e.fraction for e in progress_events] == [0.0, 0.5]
        store.claim_next_job("w")
        store.request_cancel(None, job.id)
        clock.now += 1
        with pytest.raises(JobCancelled):
            task.advance(1)
    store.close()


@dataclass
class EmbeddedService:
    data: Path
    imports: Path  # --import-root: the photos, and files put there by tests
    env: dict[str, str]
    log: Path
    serve: ServiceProcess
    api: Api
    store: Store
    key: str
    smtp: SmtpServer
    webhook: WebhookReceiver

    def start_serve(self) -> None:
        self.serve = ServiceProcess(["serve", "--port", "0", "--data", str(self.data), "--import-root",
                                     str(self.imports)], self.env, self.log).start(wait_for_url=True)
        self.api.close()
        self.api = Api(self.serve.url or "", self.key)

    def workspace(self, job_id: str) -> Path:
        return self.data / "workspaces" / job_id

    def stage_runs(self, job_id: str) -> list[tuple[str, str]]:
        return [(run.stage, run.state) for run in self.store.stage_runs(job_id)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, monstree_small: Path, smtp_session: SmtpServer,
            webhook_session: WebhookReceiver) -> Iterator[EmbeddedService]:
    root = tmp_path_factory.mktemp("embedded")
    data, imports = root / "data", root / "imports"
    shutil.copytree(monstree_small, imports / "photos")
    store = open_store(f"sqlite:///{data / 'spaceport.db'}")
    key = store.create_api_key(store.ensure_owner("crew").id)
    webhook_session.reset()
    webhook_session.secret = SECRET
    env = service_env(smtp_host=smtp_session.host, smtp_port=smtp_session.port, webhook_secret=SECRET,
                      heartbeat_s=1, stale_after_s=15)
    serve = ServiceProcess([], env, root / "serve.log")
    service = EmbeddedService(data, imports, env, root / "serve.log", serve, Api("http://127.0.0.1:1", key), store,
                              key, smtp_session, webhook_session)
    try:
        service.start_serve()
        yield service
    finally:
        service.serve.stop()
        service.api.close()
        store.close()


def preview_job(**fields: Any) -> dict[str, Any]:
    return {"preset": "preview", "settings": dict(PREVIEW_SETTINGS), **fields}


def photo_files(folder: Path) -> list[tuple[str, bytes]]:
    return [(photo.name, photo.read_bytes()) for photo in sorted(folder.glob("*.jpg"))]


def model_files(workspace: Path) -> list[tuple[str, bytes]]:
    """A COLMAP model and its photos as a steps=train upload (images/..., sparse/0/...)."""
    files = [(f"images/{photo.name}", photo.read_bytes()) for photo in sorted((workspace / "images").glob("*.jpg"))]
    files += [(f"sparse/0/{part.name}", part.read_bytes())
              for part in sorted((workspace / "sfm" / "sparse" / "0").glob("*.bin"))]
    return files


# -- the full job, with serve killed and restarted while it trains ----------------------------------------------


@dataclass
class FullJob:
    id: str
    job: dict[str, Any]
    killed_at_step: float
    seconds: float


@pytest.fixture(scope="module")
def full_job(service: EmbeddedService) -> FullJob:
    started = time.monotonic()
    job = service.api.upload(photo_files(service.imports / "photos"),
                             preview_job(steps="full", notify={"email": EMAIL, "webhook_url": service.webhook.url}))
    # past the first checkpoint (step 50): the restarted serve must not start training from step 0
    running = service.api.wait_for(job["id"], lambda j: j["stage"] == "train" and train_step(j) >= 100,
                                   "training past its first checkpoint", log=service.serve)
    service.serve.kill()
    service.start_serve()
    final = service.api.wait_final(job["id"], log=service.serve)
    seconds = time.monotonic() - started
    print(f"\nfull job: killed serve at train step {train_step(running):.0f}, resumed from step "
          f"{final['metrics'].get('train', {}).get('resumed_from_step')}, {seconds:.0f} s in all")
    return FullJob(job["id"], final, train_step(running), seconds)


def test_full_job_survives_a_killed_serve_and_resumes_training(service: EmbeddedService, full_job: FullJob) -> None:
    job = full_job.job
    assert job["state"] == "succeeded", job["error"]
    assert job["progress"] == 1.0
    assert job["metrics"]["train"]["resumed_from_step"] > 0
    runs = service.stage_runs(full_job.id)
    # finished stages were kept: only the training interrupted by the kill ran twice
    assert runs == [("ingest", "succeeded"), ("sfm", "succeeded"), ("train", "lost"), ("train", "succeeded"),
                    ("compress", "succeeded"), ("report", "succeeded")]
    assert {item["name"] for item in job["artifacts"]} >= {"scene.sog", "splat.ply", "sparse.zip", "report.json",
                                                           "logs.zip"}
    assert service.api.artifact(full_job.id, "scene.sog")[:2] == b"PK"  # the SOG bundle is a zip


def test_full_job_reports_progress_and_stage_runs(service: EmbeddedService, full_job: FullJob) -> None:
    events = service.api.events(full_job.id)
    progress = [event["data"]["progress"] for event in events if event["kind"] == "progress"]
    assert progress and all(0.0 <= value <= 1.0 for value in progress)
    assert any(event["kind"] == "progress" and event["data"].get("eta_s") for event in events)
    train_runs = [run for run in service.store.stage_runs(full_job.id) if run.stage == "train"]
    assert [run.attempt for run in train_runs] == [1, 2]
    assert train_runs[0].worker != train_runs[1].worker  # two serve processes
    assert train_runs[1].device == "cpu" and train_runs[1].peak_memory_bytes > 0
    states = [event["data"]["state"] for event in events if event["kind"] == "state"]
    assert states[0] == "queued" and states[-1] == "succeeded" and "queued" in states[1:]  # requeued after the kill


def test_full_job_sends_the_mail_and_the_signed_webhook(service: EmbeddedService, full_job: FullJob) -> None:
    mails = service.smtp.mails_about(full_job.id)
    assert len(mails) == 1 and mails[0].rcpt_tos == [EMAIL]
    assert mails[0].message["Subject"] == f"Spaceport job {full_job.id} succeeded"
    assert f"/v1/jobs/{full_job.id}/artifacts/scene.sog" in mails[0].text()
    hooks = service.webhook.hooks_about(full_job.id)
    assert len(hooks) == 1 and hooks[0].verified is True and hooks[0].json()["event"] == "job.succeeded"
    final_event = service.api.events(full_job.id)[-1]
    assert final_event["kind"] == "state" and final_event["data"]["state"] == "succeeded"
    # deliveries come after the job ended: a client resumes the stream after the final event to see them
    notifications = [event for event in service.api.events(full_job.id, after=final_event["id"])
                     if event["kind"] == "notification"]
    assert {(event["data"]["channel"], event["data"]["ok"]) for event in notifications} == {("email", True),
                                                                                              ("webhook", True)}


# -- the other step selections ----------------------------------------------------------------------------------


def test_steps_sfm_from_an_import_root(service: EmbeddedService) -> None:
    job = service.api.submit(preview_job(steps="sfm", input_url=(service.imports / "photos").as_uri()))
    final = service.api.wait_final(job["id"], log=service.serve)
    assert final["state"] == "succeeded", final["error"]
    assert final["metrics"]["sfm"]["registered"] == 10
    assert {item["name"] for item in final["artifacts"]} == {"sparse.zip", "logs.zip"}
    assert service.stage_runs(job["id"]) == [("ingest", "succeeded"), ("sfm", "succeeded")]


def test_steps_train_from_an_uploaded_colmap_model(service: EmbeddedService, full_job: FullJob) -> None:
    files = model_files(service.workspace(full_job.id))
    job = service.api.upload(files, preview_job(steps="train", settings={**PREVIEW_SETTINGS, "train.steps": 60}))
    final = service.api.wait_final(job["id"], log=service.serve)
    assert final["state"] == "succeeded", final["error"]
    assert final["metrics"]["train"]["steps"] == 60 and final["metrics"]["train"]["resumed_from_step"] == 0
    assert [stage for stage, _ in service.stage_runs(job["id"])] == ["sfm", "train", "compress", "report"]
    assert service.api.artifact(job["id"], "scene.sog")[:2] == b"PK"


def test_steps_compress_from_an_uploaded_ply(service: EmbeddedService, full_job: FullJob) -> None:
    ply = service.api.artifact(full_job.id, "splat.ply")
    job = service.api.upload([("splat.ply", ply)], {"steps": "compress", "preset": "preview"})
    final = service.api.wait_final(job["id"], log=service.serve)
    assert final["state"] == "succeeded", final["error"]
    assert service.stage_runs(job["id"]) == [("compress", "succeeded")]
    assert service.api.artifact(job["id"], "scene.sog")[:2] == b"PK"


def test_legacy_start_job_compression_with_the_old_body(service: EmbeddedService, full_job: FullJob) -> None:
    ply = service.imports / "legacy" / "splat.ply"
    ply.parent.mkdir()
    ply.write_bytes(service.api.artifact(full_job.id, "splat.ply"))
    response = service.api.client.post("/start-job", json={"s3Url": ply.as_uri(), "email": "legacy@example.org",
                                                           "pipelineStep": "compression"})
    assert response.status_code == 200, response.text
    job_id = response.json()["jobId"]
    final = service.api.wait_final(job_id, log=service.serve)
    assert final["state"] == "succeeded", final["error"]
    assert final["steps"] == "compress"
    mail = service.smtp.mails_about(job_id)[0]
    assert mail.rcpt_tos == ["legacy@example.org"]


def test_a_clean_stop_of_serve_queues_the_running_job_and_the_next_start_finishes_it(
        service: EmbeddedService, full_job: FullJob) -> None:
    files = model_files(service.workspace(full_job.id))
    job = service.api.upload(files, preview_job(steps="train", settings={**PREVIEW_SETTINGS, "train.steps": 150}))
    service.api.wait_for(job["id"], lambda j: j["stage"] == "train" and train_step(j) >= 25, "training",
                         log=service.serve)
    service.serve.stop()  # SIGTERM: the stage gets SIGTERM too, checkpoints, and the job goes back to the queue
    stopped = service.store.get_job(None, job["id"])
    assert stopped.state == "queued" and stopped.claimed_by is None
    assert service.stage_runs(job["id"]) == [("sfm", "succeeded"), ("train", "lost")]
    service.start_serve()
    final = service.api.wait_final(job["id"], log=service.serve)
    assert final["state"] == "succeeded", final["error"]
    assert final["metrics"]["train"]["resumed_from_step"] >= 25  # the checkpoint written on SIGTERM


# -- cancel -----------------------------------------------------------------------------------------------------


def cancel_and_time(service: EmbeddedService, job_id: str) -> tuple[dict[str, Any], float]:
    asked = time.monotonic()
    response = service.api.client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    final = wait_until(lambda: (job := service.api.job(job_id))["state"] != "running" and job, 60,
                       what=f"job {job_id} to stop", interval_s=0.1, log=service.serve)
    return final, time.monotonic() - asked


def test_cancel_during_training_stops_it_and_keeps_finished_stages(service: EmbeddedService,
                                                                   full_job: FullJob) -> None:
    files = model_files(service.workspace(full_job.id))
    job = service.api.upload(files, preview_job(steps="train", settings={**PREVIEW_SETTINGS, "train.steps": 5000},
                                                notify={"webhook_url": service.webhook.url}))
    service.api.wait_for(job["id"], lambda j: j["stage"] == "train" and train_step(j) >= 25, "training",
                         log=service.serve)
    final, latency = cancel_and_time(service, job["id"])
    print(f"\ncancel during train: cancelled {latency:.1f} s after the request")
    assert final["state"] == "cancelled"
    assert service.stage_runs(job["id"]) == [("sfm", "succeeded"), ("train", "cancelled")]
    workspace = service.workspace(job["id"])
    assert (workspace / "sfm" / ".done").exists() and not (workspace / "train" / ".done").exists()
    # stopped by the SIGTERM of its worker (it checkpoints first) or by its own progress report, whichever came first
    assert re.search(r"stopped by signal 15|train: cancelled", (workspace / "logs" / "train.log").read_text())
    hooks = service.webhook.hooks_about(job["id"])
    assert hooks[0].json()["event"] == "job.cancelled"


def test_cancel_during_sfm_stops_it(service: EmbeddedService) -> None:
    job = service.api.submit(preview_job(steps="sfm", input_url=(service.imports / "photos").as_uri()))
    service.api.wait_for(job["id"], lambda j: j["stage"] == "sfm", "sfm to start", log=service.serve)
    final, latency = cancel_and_time(service, job["id"])
    print(f"\ncancel during sfm: cancelled {latency:.1f} s after the request")
    assert final["state"] == "cancelled"
    assert service.stage_runs(job["id"]) == [("ingest", "succeeded"), ("sfm", "cancelled")]
    assert (service.workspace(job["id"]) / "images" / ".done").exists()


# -- failures ---------------------------------------------------------------------------------------------------


def test_a_failing_stage_fails_the_job_with_its_message(service: EmbeddedService) -> None:
    truncated = (b"ply\nformat binary_little_endian 1.0\nelement vertex 1000\nproperty float x\nproperty float y\n"
                 b"property float z\nend_header\n" + bytes(12))
    job = service.api.upload([("broken.ply", truncated)], {"steps": "compress", "preset": "preview",
                                                           "notify": {"email": "failures@example.org"}})
    final = service.api.wait_final(job["id"], log=service.serve)
    assert final["state"] == "failed" and final["stage"] == "compress"
    assert "not a readable PLY file" in final["error"] and "truncated" in final["error"]
    assert service.stage_runs(job["id"]) == [("compress", "failed")]
    mail = service.smtp.mails_about(job["id"])[0]
    assert mail.message["Subject"] == f"Spaceport job {job['id']} failed at compress"
    assert "not a readable PLY file" in mail.text()


def test_a_stage_process_killed_by_the_system_fails_the_job_and_serve_stays_up(service: EmbeddedService) -> None:
    job = service.api.submit(preview_job(steps="sfm", input_url=(service.imports / "photos").as_uri()))
    service.api.wait_for(job["id"], lambda j: j["stage"] == "sfm", "sfm to start", log=service.serve)
    victims = wait_until(lambda: stage_processes(service.serve.pid), 30, what="the stage process")
    for pid in victims:  # as the out-of-memory killer would
        os.kill(pid, signal.SIGKILL)
    final = service.api.wait_final(job["id"], log=service.serve)
    assert final["state"] == "failed" and final["stage"] == "sfm"
    assert "sfm crashed: its process was killed by SIGKILL" in final["error"]
    assert service.stage_runs(job["id"]) == [("ingest", "succeeded"), ("sfm", "failed")]
    assert service.api.client.get("/healthz").status_code == 200  # the API never went down
