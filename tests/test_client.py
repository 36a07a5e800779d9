"""`spaceport jobs` and spaceport.client against a real API server on 127.0.0.1 (uvicorn, SQLite store): uploads of
real photos, steps inferred from the input, list / show / cancel, downloads, and `watch` following events that a
background thread appends through the store, also across a restart of the server."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner

from spaceport.api import create_app
from spaceport.api.schemas import JobList, JobOut
from spaceport.cli import app
from spaceport.client import ApiClient, job_spec
from spaceport.settings import Settings
from tests.conftest import downscale_copy, monstree_photos
from tests.servers import free_port, wait_until
from tests.test_api import Service, make_service

PLY = b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nend_header\n"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four real monstree photos at 200 px."""
    return downscale_copy(monstree_photos()[:4], tmp_path_factory.mktemp("photos"), 200)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    settings = Settings(data_dir=tmp_path / "data", max_upload_bytes=200_000, max_running_jobs_per_owner=50)
    settings.data_dir.mkdir()
    with make_service(settings) as running:
        yield running


def jobs(service: Service, *args: str, key: str | None = None) -> object:
    """`spaceport jobs ARGS` against the service, with alice's key unless ``key`` is given."""
    env = {"SPACEPORT_SERVER": service.url, "SPACEPORT_API_KEY": key if key is not None else service.alice}
    return CliRunner().invoke(app, ["jobs", *args], env=env)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def uploaded_files(service: Service, job_id: str) -> dict[str, bytes]:
    """The files of a job's upload, by their name relative to the upload folder."""
    folder = service.settings.data_dir.resolve() / "uploads" / job_id / "input"
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def queued_job(service: Service) -> str:
    with ApiClient(service.url, service.alice) as client:
        return client.submit_url(job_spec(input_url="s3://bucket/photos/", preset="preview")).id


# -- submit ------------------------------------------------------------------------------------------------------


def test_submit_uploads_a_photo_folder_and_prints_the_job_id_last(service: Service, photos: list[Path],
                                                                  tmp_path: Path) -> None:
    folder = tmp_path / "shoot"
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).write_bytes(photo.read_bytes())
    (folder / "notes.txt").write_text("not a photo")
    (folder / ".DS_Store").write_bytes(b"\0")
    result = jobs(service, "submit", str(folder), "--preset", "preview", "--set", "train.steps=30",
                  "--email", "ops@example.org", "--webhook", "http://127.0.0.1:9/hook")
    assert result.exit_code == 0, result.output
    job_id = last_line(result.stdout)
    job = service.store.get_job(service.alice_id, job_id)
    assert (job.state, job.steps, job.preset, job.settings) == ("queued", "full", "preview", {"train.steps": 30})
    assert (job.notify_email, job.webhook_url) == ("ops@example.org", "http://127.0.0.1:9/hook")
    assert uploaded_files(service, job_id) == {photo.name: photo.read_bytes() for photo in photos}
    assert "uploading 4 files" in result.stderr and "notes.txt" in result.stderr


def test_submit_infers_the_steps_from_the_input(service: Service, photos: list[Path], tmp_path: Path) -> None:
    (tmp_path / "scene.ply").write_bytes(PLY)
    model = tmp_path / "colmap"
    (model / "images").mkdir(parents=True)
    (model / "sparse" / "0").mkdir(parents=True)
    for photo in photos[:2]:
        (model / "images" / photo.name).write_bytes(photo.read_bytes())
    for name in ("cameras.bin", "images.bin", "points3D.bin"):
        (model / "sparse" / "0" / name).write_bytes(bytes(16))
    with zipfile.ZipFile(tmp_path / "photos.zip", "w") as archive:
        for photo in photos:
            archive.write(photo, photo.name)
    expected = {"scene.ply": ("compress", {"scene.ply"}),
                "colmap": ("train", {f"images/{photos[0].name}", f"images/{photos[1].name}", "sparse/0/cameras.bin",
                                     "sparse/0/images.bin", "sparse/0/points3D.bin"}),
                "photos.zip": ("full", {"photos.zip"})}
    for name, (steps, files) in expected.items():
        result = jobs(service, "submit", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        job_id = last_line(result.stdout)
        assert service.store.get_job(service.alice_id, job_id).steps == steps, name
        assert set(uploaded_files(service, job_id)) == files
    result = jobs(service, "submit", str(tmp_path / "colmap"), "--steps", "compress")  # an explicit --steps wins
    assert result.exit_code == 2 and "steps=compress takes exactly one .ply" in result.stderr


def test_submit_of_a_storage_url_sends_it_as_input_url(service: Service) -> None:
    result = jobs(service, "submit", "s3://bucket/shoot/", "--steps", "sfm")
    assert result.exit_code == 0, result.output
    job = service.store.get_job(service.alice_id, last_line(result.stdout))
    assert (job.input_url, job.steps) == ("s3://bucket/shoot/", "sfm")
    result = jobs(service, "submit", "https://example.org/photos.zip")
    assert result.exit_code == 2 and "only s3:// and file://" in result.stderr


def test_submit_mistakes_fail_before_any_upload(service: Service, photos: list[Path], tmp_path: Path) -> None:
    folder = photos[0].parent
    cases = [(["--set", "train.stpes=3"], "train.steps"), (["--steps", "3dgs"], "choose one of"),
             (["--preset", "fast"], "preset 'fast'"), (["--email", "nobody"], "not an e-mail address")]
    for extra, message in cases:
        result = jobs(service, "submit", str(folder), *extra)
        assert result.exit_code == 2 and message in result.stderr, (extra, result.output)
    result = jobs(service, "submit", str(tmp_path / "missing"))
    assert result.exit_code == 2 and "does not exist" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no photos" in jobs(service, "submit", str(empty)).stderr
    assert service.store.list_jobs(service.alice_id).jobs == []
    assert not (service.settings.data_dir / "uploads").exists() or not any((service.settings.data_dir / "uploads")
                                                                            .iterdir())


def test_server_refusals_and_an_absent_server_are_clear_errors(service: Service, tmp_path: Path,
                                                              photos: list[Path]) -> None:
    video = tmp_path / "walk.mp4"
    video.write_bytes(b"\0\0\0\x18ftypmp42" + bytes(300_000))  # over the service's 200 kB upload limit
    result = jobs(service, "submit", str(video))
    assert result.exit_code == 2 and "SPACEPORT_MAX_UPLOAD_BYTES" in result.stderr and "HTTP 413" in result.stderr
    result = jobs(service, "submit", str(photos[0].parent), key="sp_wrong")
    assert result.exit_code == 2 and "HTTP 401" in result.stderr and "not valid" in result.stderr
    result = jobs(service, "list", key="")
    assert result.exit_code == 2 and "missing API key" in result.stderr and "--key" in result.stderr
    absent = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["jobs", "list", "--server", absent, "--key", service.alice])
    assert result.exit_code == 2
    assert f"cannot reach the Spaceport server at {absent}" in result.stderr and "spaceport serve" in result.stderr
    assert service.store.list_jobs(service.alice_id).jobs == []


# -- list, show, cancel ------------------------------------------------------------------------------------------


def test_list_show_and_cancel(service: Service) -> None:
    first, second = queued_job(service), queued_job(service)
    result = jobs(service, "list", "--json")
    assert result.exit_code == 0, result.output
    assert [job.id for job in JobList.model_validate_json(result.stdout).jobs] == [second, first]
    table = jobs(service, "list")
    assert table.exit_code == 0 and first in table.stdout and second in table.stdout and "queued" in table.stdout
    shown = jobs(service, "show", first)
    assert shown.exit_code == 0 and JobOut.model_validate_json(shown.stdout).id == first
    cancelled = jobs(service, "cancel", first)
    assert cancelled.exit_code == 0 and last_line(cancelled.stdout) == "cancelled"
    assert service.store.get_job(service.alice_id, first).state == "cancelled"
    again = jobs(service, "cancel", first)
    assert again.exit_code == 2 and "already cancelled" in again.stderr and "HTTP 409" in again.stderr
    listed = JobList.model_validate_json(jobs(service, "list", "--json", "--state", "queued").stdout)
    assert [job.id for job in listed.jobs] == [second]
    with_bob = jobs(service, "show", first, key=service.bob)
    assert with_bob.exit_code == 2 and f"job {first} not found" in with_bob.stderr


# -- download ----------------------------------------------------------------------------------------------------


def test_download_every_artifact_or_one(service: Service, tmp_path: Path) -> None:
    job_id = queued_job(service)
    workspace = service.settings.data_dir / "workspaces" / job_id
    files = {"compress/scene.sog": bytes(range(256)) * 5000, "report/report.json": b'{"quality_score": 80}',
             "sfm/sparse/0/cameras.bin": bytes(24), "sfm/sparse/0/images.bin": bytes(8),
             "sfm/sparse/0/points3D.bin": bytes(8), "logs/sfm.log": b"ok\n"}
    for rel, data in files.items():
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_bytes(data)
    service.store.claim_next_job("w")
    service.store.set_state(job_id, "succeeded", worker_id="w")
    out = tmp_path / "results"
    result = jobs(service, "download", job_id, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(Path(line).name for line in result.stdout.split()) == ["logs.zip", "report.json", "scene.sog",
                                                                        "sparse.zip"]
    assert sorted(path.name for path in out.iterdir()) == ["logs.zip", "report.json", "scene.sog", "sparse.zip"]
    assert (out / "scene.sog").read_bytes() == files["compress/scene.sog"]
    assert json.loads((out / "report.json").read_text()) == {"quality_score": 80}
    assert sorted(zipfile.ZipFile(out / "sparse.zip").namelist()) == ["cameras.bin", "images.bin", "points3D.bin"]
    assert zipfile.ZipFile(io.BytesIO((out / "logs.zip").read_bytes())).read("sfm.log") == b"ok\n"
    one = tmp_path / "one"
    result = jobs(service, "download", job_id, "scene.sog", "-o", str(one))
    assert result.exit_code == 0 and last_line(result.stdout) == str(one / "scene.sog")
    missing = jobs(service, "download", job_id, "splat.ply", "-o", str(tmp_path / "none"))
    assert missing.exit_code == 2 and "splat.ply" in missing.stderr and "HTTP 404" in missing.stderr
    assert not (tmp_path / "none").exists()
    queued = queued_job(service)
    nothing = jobs(service, "download", queued, "-o", str(tmp_path / "none"))
    assert nothing.exit_code == 2 and "has no results yet" in nothing.stderr


# -- watch -------------------------------------------------------------------------------------------------------


def run_job_in_background(service: Service, job_id: str, final: str, pause_s: float = 0.05) -> threading.Thread:
    """A stand-in worker: stage runs, progress and log events through the store, then the final state."""
    store = service.store

    def work() -> None:
        assert store.claim_job(job_id, "worker") is not None
        store.set_state(job_id, "running", worker_id="worker")
        for index, stage in enumerate(("ingest", "sfm")):
            run = store.start_stage_run(job_id, stage, worker_id="worker")
            for step in range(1, 5):
                time.sleep(pause_s)
                store.update_progress(job_id, stage=stage, fraction=step / 4, progress=(index + step / 4) / 2,
                                      eta_s=30.0, message=f"{stage} step {step}/4", worker_id="worker")
            store.add_event(job_id, "log", stage=stage, message=f"{stage} log line")
            failing = final == "failed" and stage == "sfm"
            store.finish_stage_run(run.id, "failed" if failing else "succeeded", seconds=1.5,
                                   error="only 2 of 4 photos registered" if failing else None)
        if final == "cancelled":
            store.request_cancel(None, job_id)
        store.set_state(job_id, final, worker_id="worker",
                        error="sfm: only 2 of 4 photos registered" if final == "failed" else None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("final", "exit_code"), [("succeeded", 0), ("failed", 1), ("cancelled", 4)])
def test_watch_shows_stage_bars_until_the_final_state(service: Service, final: str, exit_code: int) -> None:
    job_id = queued_job(service)
    worker = run_job_in_background(service, job_id, final)
    result = jobs(service, "watch", job_id)
    worker.join(10)
    assert result.exit_code == exit_code, result.output
    for text in ("ingest", "sfm", "ingest log line", "job running", f"job {final}"):
        assert text in result.stderr, text
    if final == "succeeded":
        assert "done in 2s" in result.stderr and "100%" in result.stderr
    if final == "failed":
        assert "only 2 of 4 photos registered" in result.stderr


def test_submit_watch_follows_the_new_job(service: Service, photos: list[Path]) -> None:
    done = threading.Event()

    def work_on_new_job() -> None:
        assert wait_until(lambda: service.store.list_jobs(service.alice_id).jobs, timeout_s=60)
        run_job_in_background(service, service.store.list_jobs(service.alice_id).jobs[0].id, "succeeded").join()
        done.set()

    helper = threading.Thread(target=work_on_new_job, daemon=True)
    helper.start()
    result = jobs(service, "submit", str(photos[0].parent), "--watch")
    helper.join(60)
    assert done.is_set() and result.exit_code == 0, result.output
    assert last_line(result.stdout) == service.store.list_jobs(service.alice_id).jobs[0].id
    assert "job succeeded" in result.stderr


def test_progress_text_shows_the_stage_figures() -> None:
    from spaceport.cli import _progress_text

    metrics = {"train": {"task": "train", "completed": 150, "total": 300, "loss": 0.19950544, "gaussians": 1691},
               "sfm": {"registered": 7}}
    assert _progress_text("train", metrics, "train") == "train 150/300 loss=0.1995 gaussians=1691"
    assert _progress_text("sfm: match (exhaustive)", {}, "sfm") == "sfm: match (exhaustive)"
    assert _progress_text(None, {"loss": 0.5}, "train") == "loss=0.5"


class RestartableServer:
    """uvicorn on 127.0.0.1:``port`` in a thread (port 0: a free one); stop() and start again on the same port."""

    def __init__(self, app, port: int = 0) -> None:  # noqa: ANN001 - a FastAPI app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=0.2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        assert wait_until(lambda: self.server.started or not self.thread.is_alive(), timeout_s=20)
        assert self.server.started, "uvicorn did not start"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_follow_events_resumes_after_the_server_restarts(service: Service) -> None:
    job_id = queued_job(service)
    store = service.store
    store.claim_job(job_id, "worker")
    store.set_state(job_id, "running", worker_id="worker")
    store.add_event(job_id, "log", message="started")
    first = RestartableServer(create_app(service.settings, store, sse_poll_s=0.05))
    received, reconnects = [], []

    def follow() -> None:
        with ApiClient(f"http://127.0.0.1:{first.port}", service.alice) as client:
            received.extend(event.id for event in client.follow_events(job_id, on_reconnect=reconnects.append))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert wait_until(lambda: len(received) == len(store.events_after(job_id)), timeout_s=20)
    first.stop()
    for step in range(3):  # written while no server is up
        store.update_progress(job_id, stage="ingest", fraction=step / 3, progress=step / 10, worker_id="worker")
    assert wait_until(lambda: any("Connection refused" in reason for reason in reconnects), timeout_s=20)
    second = RestartableServer(create_app(service.settings, store, sse_poll_s=0.05), port=first.port)
    try:
        store.set_state(job_id, "succeeded", worker_id="worker")
        follower.join(30)
        assert not follower.is_alive()
    finally:
        second.stop()
    assert received == [event.id for event in store.events_after(job_id)]  # each event once, in order
