"""The job API through a real uvicorn server on 127.0.0.1 (SQLite and PostgreSQL stores): auth, job creation and
validation, uploads (limits, names, types), /start-job, server-sent events, artifacts, paging, metrics."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from typer.testing import CliRunner

from spaceport.api import create_app
from spaceport.api.artifacts import EXPORT_INPUTS, TRAINED_SPLAT
from spaceport.compress.export import export_splat
from spaceport.formats.compressed_ply import read_compressed_ply
from spaceport.formats.gaussians import read_ply, write_ply
from spaceport.formats.splat import read_splat
from spaceport.formats.spz import read_spz
from spaceport.jobs.store import Store, open_store
from spaceport.settings import Settings
from tests.conftest import downscale_copy, monstree_photos
from tests.servers import S3Server

ARTIFACT_NAMES = ("scene.sog", "splat.ply", "sparse.zip", "report.json", "report.html", "logs.zip")


class LiveServer:
    """uvicorn serving ``app`` in a thread on a free loopback port."""

    def __init__(self, app) -> None:  # noqa: ANN001 - a FastAPI app
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class Service:
    url: str
    store: Store
    settings: Settings
    alice: str  # API keys of two owners
    bob: str
    alice_id: int

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@contextmanager
def make_service(settings: Settings) -> Iterator[Service]:
    store = open_store(settings.resolved_database_url)
    alice = store.ensure_owner("alice")
    bob = store.ensure_owner("bob")
    server = LiveServer(create_app(settings, store, sse_poll_s=0.05))
    try:
        yield Service(server.url, store, settings, store.create_api_key(alice.id), store.create_api_key(bob.id),
                      alice.id)
    finally:
        server.stop()
        store.close()


@pytest.fixture
def imports(tmp_path: Path) -> Path:
    root = tmp_path / "imports"
    (root / "photos").mkdir(parents=True)
    return root


@pytest.fixture
def service(database_url: str, tmp_path: Path, imports: Path) -> Iterator[Service]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, import_roots=[imports],
                        max_upload_bytes=200_000, max_running_jobs_per_owner=50)
    with make_service(settings) as running:
        yield running


@pytest.fixture
def alice(service: Service) -> Iterator[httpx.Client]:
    with service.client(service.alice) as client:
        yield client


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three real monstree photos at 200 px (a few KB each)."""
    return downscale_copy(monstree_photos()[:3], tmp_path_factory.mktemp("photos"), 200)


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[dict[str, str], bytes]:
    """A multipart/form-data body built by hand, so that file names go over the wire byte for byte."""
    boundary = "spaceport-test-boundary"
    body = io.BytesIO()
    for field, filename, data in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body.write(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode())
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body.getvalue()


def upload(client: httpx.Client, files: list[tuple[str, bytes]], job: dict | None = None) -> httpx.Response:
    parts = [("files", name, data) for name, data in files]
    if job is not None:
        parts.insert(0, ("job", None, json.dumps(job).encode()))
    headers, body = multipart(parts)
    return client.post("/v1/jobs", content=body, headers=headers)


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file()) if folder.exists() else []


def s3_job(client: httpx.Client, **fields) -> dict:
    response = client.post("/v1/jobs", json={"input_url": "s3://bucket/photos/", "preset": "preview", **fields})
    assert response.status_code == 201, response.text
    return response.json()


# -- auth ------------------------------------------------------------------------------------------------------


def job_routes(job_id: str) -> list[tuple[str, str]]:
    return [("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/events"),
            ("POST", f"/v1/jobs/{job_id}/cancel")] + [("GET", f"/v1/jobs/{job_id}/artifacts/{name}")
                                                       for name in ARTIFACT_NAMES]


def test_every_route_but_healthz_needs_a_valid_key(service: Service, alice: httpx.Client) -> None:
    job_id = s3_job(alice)["id"]
    routes = job_routes(job_id) + [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("POST", "/start-job"),
                                   ("GET", "/metrics")]
    for authorization in (None, "Bearer sp_not-a-key", "Basic YWxpY2U6c2VjcmV0", "Bearer"):
        with service.client() as client:
            headers = {"Authorization": authorization} if authorization else {}
            for method, path in routes:
                response = client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, authorization, response.text)
                assert "Bearer" in response.json()["detail"] and response.headers["www-authenticate"]
    with service.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
    assert alice.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"  # nothing was cancelled


def test_another_owners_job_is_404_on_every_job_route(service: Service, alice: httpx.Client) -> None:
    job_id = s3_job(alice)["id"]
    with service.client(service.bob) as bob:
        for method, path in job_routes(job_id):
            response = bob.request(method, path)
            missing = bob.request(method, path.replace(job_id, "nonexistent1"))
            assert response.status_code == missing.status_code == 404, (method, path)
            assert response.json()["detail"] == missing.json()["detail"].replace("nonexistent1", job_id)
        assert bob.get("/v1/jobs").json()["jobs"] == []
    assert alice.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"


def test_keys_create_prints_the_key_alone_on_its_last_line(tmp_path: Path) -> None:
    from spaceport.cli import app

    result = CliRunner().invoke(app, ["keys", "create", "--owner", "carol", "--data", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    store = open_store(Settings(data_dir=tmp_path / "d").resolved_database_url)
    assert store.owner_for_key(key).name == "carol"
    store.close()


# -- JSON jobs and validation ------------------------------------------------------------------------------


def test_json_job_is_queued_with_its_resolved_config(service: Service, alice: httpx.Client) -> None:
    body = s3_job(alice, steps="sfm", settings={"train.steps": 30},
                  notify={"email": "ops@example.org", "webhook_url": "http://127.0.0.1:9/hook"})
    for key in ("id", "state", "stage", "progress", "eta_s", "error", "metrics", "created_at", "updated_at",
                "artifacts"):
        assert key in body
    assert (body["state"], body["progress"], body["steps"], body["artifacts"]) == ("queued", 0.0, "sfm", [])
    assert body["config"]["train"]["steps"] == 30 and body["settings"] == {"train.steps": 30}
    job = service.store.get_job(service.alice_id, body["id"])
    assert job.config == body["config"] and job.notify_email == "ops@example.org"
    assert job.workspace_url.endswith(f"/workspaces/{body['id']}")


@pytest.mark.parametrize(("fields", "message"), [
    ({"settings": {"train.stpes": 3}}, "did you mean train.steps"),
    ({"steps": "everything"}, "choose one of full, sfm, train, compress"),
    ({"preset": "ultra"}, "preset 'ultra'"),
    ({"colour": "red"}, "colour"),
    ({"notify": {"email": "nobody"}}, "not an e-mail address"),
    ({"input_url": None}, "input_url is missing"),
    ({"input_url": "http://example.org/photos.zip"}, "input_url must be s3://"),
    ({"input_url": "file:///etc/passwd"}, "under an import root"),
])
def test_invalid_jobs_get_422_saying_what_to_fix(alice: httpx.Client, fields: dict, message: str) -> None:
    response = alice.post("/v1/jobs", json={"input_url": "s3://bucket/photos/", **fields})
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_file_urls_under_an_import_root_are_accepted(alice: httpx.Client, imports: Path, tmp_path: Path) -> None:
    (imports / "photos" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    assert s3_job(alice, input_url=(imports / "photos").as_uri())["state"] == "queued"
    escape = f"file://{imports}/photos/../../data"
    assert alice.post("/v1/jobs", json={"input_url": escape}).status_code == 422


def test_per_owner_limit_gives_429(service: Service, alice: httpx.Client, photos: list[Path]) -> None:
    service.settings.max_running_jobs_per_owner = 2
    s3_job(alice)
    s3_job(alice)
    for response in (alice.post("/v1/jobs", json={"input_url": "s3://bucket/p/"}),
                     upload(alice, [(photos[0].name, photos[0].read_bytes())])):
        assert response.status_code == 429
        assert "limit per owner is 2" in response.json()["detail"]
    with service.client(service.bob) as bob:
        assert s3_job(bob)["state"] == "queued"


def test_legacy_start_job_makes_the_same_job(alice: httpx.Client) -> None:
    for step, steps in (("full", "full"), ("3dgs", "train"), ("compression", "compress")):
        response = alice.post("/start-job", json={"s3Url": "s3://bucket/scan/", "email": "a@example.org",
                                                  "pipelineStep": step})
        assert response.status_code == 200, response.text
        job = alice.get(f"/v1/jobs/{response.json()['jobId']}").json()
        assert (job["steps"], job["input_url"], job["notify"]["email"]) == (steps, "s3://bucket/scan/",
                                                                           "a@example.org")
    refused = alice.post("/start-job", json={"s3Url": "s3://bucket/scan/", "pipelineStep": "sfm"})
    assert refused.status_code == 422 and "pipelineStep" in refused.json()["detail"]


# -- uploads ---------------------------------------------------------------------------------------------------


def test_photo_upload_lands_in_the_jobs_upload_folder(service: Service, alice: httpx.Client,
                                                      photos: list[Path]) -> None:
    files = [(f"site/{photo.name}", photo.read_bytes()) for photo in photos]
    # as any HTTP client sends it (httpx builds the body; the names keep their folder)
    response = alice.post("/v1/jobs", files=[("files", (name, data, "image/jpeg")) for name, data in files],
                          data={"job": json.dumps({"steps": "sfm", "preset": "preview"})})
    assert response.status_code == 201, response.text
    job = response.json()
    input_dir = service.settings.data_dir.resolve() / "uploads" / job["id"] / "input"
    assert job["input_url"] == input_dir.as_uri() and job["steps"] == "sfm"
    assert [path.relative_to(input_dir).as_posix() for path in files_under(input_dir)] == sorted(n for n, _ in files)
    assert (input_dir / files[0][0]).read_bytes() == files[0][1]


def test_upload_types_are_checked_by_content(alice: httpx.Client, photos: list[Path], service: Service) -> None:
    photo = photos[0].read_bytes()
    ply = b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nend_header\n"
    refused = [
        ([("notes.jpg", b"just some text, not a photo")], None, 415, "notes.jpg"),
        ([("scene.ply", ply)], None, 422, "scene.ply"),
        ([("a.jpg", photo)], {"steps": "compress"}, 422, "exactly one .ply"),
        ([("images/a.jpg", photo), ("sparse/0/cameras.bin", bytes(16))], {"steps": "train"}, 422, "incomplete"),
        ([("a.jpg", photo), ("a.jpg", photo)], None, 422, "sent twice"),
        ([], None, 422, "no files"),
    ]
    for files, job, status, message in refused:
        response = upload(alice, files, job)
        assert response.status_code == status, (files[:1], response.text)
        assert message in response.json()["detail"]
    model = [(f"sparse/0/{name}.bin", bytes(64)) for name in ("cameras", "images", "points3D")]
    accepted = [
        ([("scene.ply", ply)], {"steps": "compress"}),
        ([("images/a.jpg", photo), *model], {"steps": "train"}),
        ([("photos.zip", _zip({"set/a.jpg": photo, "set/b.jpg": photo}))], None),
        ([("clip.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(32))], None),
    ]
    for files, job in accepted:
        response = upload(alice, files, job)
        assert response.status_code == 201, response.text
    assert len(list((service.settings.data_dir / "uploads").iterdir())) == len(accepted)  # refusals left nothing


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["../evil.jpg", "images/../../evil.jpg", "/tmp/evil.jpg", "C:/evil.jpg",
                                  "images\\..\\evil.jpg", "evil\x00.jpg", ".."])
def test_unsafe_upload_names_are_refused_and_nothing_is_written(service: Service, alice: httpx.Client,
                                                                photos: list[Path], tmp_path: Path,
                                                                name: str) -> None:
    response = upload(alice, [("ok.jpg", photos[0].read_bytes()), (name, photos[1].read_bytes())])
    assert response.status_code == 422, response.text
    assert "is refused" in response.json()["detail"]
    assert not [path for path in tmp_path.rglob("*evil*")]
    assert files_under(service.settings.data_dir / "uploads") == []


def test_zip_slip_is_refused(service: Service, alice: httpx.Client, photos: list[Path]) -> None:
    response = upload(alice, [("photos.zip", _zip({"../../evil.jpg": photos[0].read_bytes()}))])
    assert response.status_code == 422 and "../../evil.jpg" in response.json()["detail"]
    assert files_under(service.settings.data_dir / "uploads") == []


def test_oversize_uploads_get_413_and_leave_nothing(service: Service, alice: httpx.Client,
                                                    photos: list[Path]) -> None:
    limit = service.settings.max_upload_bytes
    big = photos[0].read_bytes() + bytes(limit)  # a JPEG head, then more than the limit: refused while streaming
    response = upload(alice, [("a.jpg", photos[1].read_bytes()), ("b.jpg", big)])
    assert response.status_code == 413, response.text
    assert str(limit) in response.json()["detail"]
    declared = upload(alice, [("c.jpg", photos[0].read_bytes() + bytes(3 * 2**20))])  # Content-Length says it
    assert declared.status_code == 413 and str(limit) in declared.json()["detail"]
    huge_json = alice.post("/v1/jobs", json={"input_url": "s3://bucket/p/", "settings": {"x": "a" * 2**21}})
    assert huge_json.status_code == 413 and "multipart" in huge_json.json()["detail"]
    uploads = service.settings.data_dir / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
    assert alice.get("/v1/jobs").json()["jobs"] == []


# -- reading jobs ------------------------------------------------------------------------------------------


def test_jobs_are_paged_newest_first(alice: httpx.Client) -> None:
    created = [s3_job(alice)["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        page = alice.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [job["id"] for job in page["jobs"]]
        if not (cursor := page["next_cursor"]):
            break
    assert seen == created[::-1]
    bad = alice.get("/v1/jobs", params={"cursor": "nonsense"})
    assert bad.status_code == 422 and "next_cursor" in bad.json()["detail"]
    alice.post(f"/v1/jobs/{created[0]}/cancel")
    assert [job["id"] for job in alice.get("/v1/jobs", params={"state": "cancelled"}).json()["jobs"]] == created[:1]
    assert "choose one of queued" in alice.get("/v1/jobs", params={"state": "done"}).json()["detail"]


def test_cancel_a_queued_job_then_again(alice: httpx.Client) -> None:
    job_id = s3_job(alice)["id"]
    assert alice.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelled"
    again = alice.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]


def read_sse(response: httpx.Response) -> list[tuple[int, dict]]:
    events, current_id = [], None
    for line in response.iter_lines():
        if line.startswith("id: "):
            current_id = int(line[4:])
        elif line.startswith("data: "):
            events.append((current_id, json.loads(line[6:])))
    return events


def test_events_stream_live_and_resume_with_last_event_id(service: Service, alice: httpx.Client) -> None:
    job_id = s3_job(alice)["id"]
    store = service.store
    assert store.claim_next_job("worker") is not None
    ids = [store.add_event(job_id, "log", stage="sfm", message=f"line {i}") for i in range(3)]

    def finish_later() -> None:
        time.sleep(0.3)
        store.update_progress(job_id, stage="sfm", fraction=0.5, progress=0.25, message="half", metrics={"n": 1})
        store.set_state(job_id, "succeeded", worker_id="worker")

    writer = threading.Thread(target=finish_later)
    writer.start()
    with alice.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(ids[0])}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_sse(response)  # returns: the stream ends after the final state event
    writer.join()
    assert [event_id for event_id, _ in events] == sorted(event_id for event_id, _ in events)
    assert [data["message"] for _, data in events] == ["line 1", "line 2", "half", "succeeded"]
    assert events[2][1]["fraction"] == 0.5 and events[2][1]["data"]["metrics"] == {"n": 1}
    assert all(event_id == data["id"] for event_id, data in events)
    with alice.stream("GET", f"/v1/jobs/{job_id}/events") as response:  # from the start, already final
        assert [data["kind"] for _, data in read_sse(response)] == ["state", "state", "log", "log", "log",
                                                                   "progress", "state"]
    with alice.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(events[-1][0])}) as response:
        assert read_sse(response) == []


def test_artifacts_are_listed_and_served_and_names_cannot_escape(service: Service, alice: httpx.Client) -> None:
    job_id = s3_job(alice)["id"]
    workspace = service.settings.data_dir / "workspaces" / job_id
    files = {"compress/scene.sog": b"SOG" * 100, "report/report.json": b'{"quality_score": 80}',
             "sfm/sparse/0/cameras.bin": bytes(24), "sfm/sparse/0/images.bin": bytes(8),
             "sfm/sparse/0/points3D.bin": bytes(8), "logs/sfm.log": b"ok\n", "job.json": b'{"secret": 1}'}
    for rel, data in files.items():
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_bytes(data)
    service.store.claim_next_job("w")
    service.store.set_state(job_id, "succeeded", worker_id="w")
    listed = {item["name"]: item for item in alice.get(f"/v1/jobs/{job_id}").json()["artifacts"]}
    assert set(listed) == {"scene.sog", "report.json", "sparse.zip", "logs.zip"}
    assert listed["scene.sog"]["size"] == 300 and listed["sparse.zip"]["size"] is None
    assert alice.get(listed["scene.sog"]["url"]).content == files["compress/scene.sog"]
    sparse = zipfile.ZipFile(io.BytesIO(alice.get(listed["sparse.zip"]["url"]).content))
    assert sorted(sparse.namelist()) == ["cameras.bin", "images.bin", "points3D.bin"]
    missing = alice.get(f"/v1/jobs/{job_id}/artifacts/splat.ply")
    assert missing.status_code == 404 and "not there" in missing.json()["detail"]
    for name in ("../job.json", "..%2Fjob.json", "%2e%2e%2fjob.json", "scene.sog%2F..%2F..%2Fjob.json",
                 "compress/scene.sog", "job.json"):
        response = alice.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        assert response.status_code == 404, name
        assert "secret" not in response.text


def copy_export_inputs(preview_workspace: Path, workspace: Path) -> dict[str, bytes]:
    """The files an export reads of the shared preview run, copied into a job's workspace; {rel: bytes}."""
    files = {}
    for rel in (TRAINED_SPLAT, *EXPORT_INPUTS):
        source = preview_workspace / rel
        for file in [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file()):
            files[file.relative_to(preview_workspace).as_posix()] = file.read_bytes()
    for rel, data in files.items():
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_bytes(data)
    return files


def test_exports_are_made_on_first_download_and_remade_when_the_splat_changes(
        service: Service, alice: httpx.Client, preview_workspace: Path, tmp_path: Path) -> None:
    job_id = s3_job(alice)["id"]
    workspace = service.settings.data_dir / "workspaces" / job_id
    copy_export_inputs(preview_workspace, workspace)
    service.store.claim_next_job("w")
    service.store.set_state(job_id, "succeeded", worker_id="w")
    listed = {item["name"]: item for item in alice.get(f"/v1/jobs/{job_id}").json()["artifacts"]}
    assert {"splat.ply", "scene.spz", "scene.splat", "scene.compressed.ply"} <= set(listed)
    assert listed["scene.spz"]["size"] is None  # not made yet

    expected = export_splat(preview_workspace, "spz", tmp_path / "cli.spz").read_bytes()  # what the CLI writes
    assert alice.get(listed["scene.spz"]["url"]).content == expected
    cached = workspace / "export" / "scene.spz"
    made_at = cached.stat().st_mtime_ns
    relisted = {item["name"]: item for item in alice.get(f"/v1/jobs/{job_id}").json()["artifacts"]}
    assert relisted["scene.spz"]["size"] == len(expected)
    assert alice.get(listed["scene.spz"]["url"]).content == expected and cached.stat().st_mtime_ns == made_at

    retrained = read_ply(workspace / "train" / "splat.ply").subset(np.arange(500))
    write_ply(workspace / "train" / "splat.ply", retrained)
    os.utime(workspace / "train" / "splat.ply", ns=(made_at + 10**9, made_at + 10**9))
    remade = read_spz_bytes(alice.get(listed["scene.spz"]["url"]).content, tmp_path)
    assert 0 < len(remade.means) <= 500

    for name, reader in (("scene.splat", read_splat), ("scene.compressed.ply", read_compressed_ply)):
        response = alice.get(listed[name]["url"])
        assert response.status_code == 200, response.text
        (tmp_path / name).write_bytes(response.content)
        assert 0 < len(reader(tmp_path / name).means) <= 500


def test_a_compress_only_job_exports_the_ply_it_started_from(
        service: Service, alice: httpx.Client, preview_workspace: Path, tmp_path: Path) -> None:
    job_id = s3_job(alice)["id"]
    workspace = service.settings.data_dir / "workspaces" / job_id
    (workspace / "input").mkdir(parents=True)
    shutil.copyfile(preview_workspace / TRAINED_SPLAT, workspace / "input" / "scan.ply")
    (workspace / "compress").mkdir()  # its SOG, quantized and pruned: the .ply is the better source
    shutil.copyfile(preview_workspace / "compress" / "scene.sog", workspace / "compress" / "scene.sog")
    service.store.claim_next_job("w")
    service.store.set_state(job_id, "succeeded", worker_id="w")
    listed = {item["name"]: item for item in alice.get(f"/v1/jobs/{job_id}").json()["artifacts"]}
    assert listed["scene.splat"]["size"] is None and "splat.ply" not in listed
    expected = export_splat(preview_workspace / TRAINED_SPLAT, "splat", tmp_path / "cli.splat").read_bytes()
    assert alice.get(listed["scene.splat"]["url"]).content == expected  # a bare .ply: nothing to prune with
    (workspace / "input" / "second.ply").write_bytes(b"ply")
    relisted = {item["name"] for item in alice.get(f"/v1/jobs/{job_id}").json()["artifacts"]}
    assert "scene.splat" not in relisted  # two .ply files: which one is meant is not known


def test_a_damaged_splat_gets_an_error_naming_it_and_no_export(
        s3_server: S3Server, tmp_path: Path, preview_workspace: Path) -> None:
    bucket = s3_server.make_bucket()
    settings = Settings(data_dir=tmp_path / "data", storage_url=f"s3://{bucket}/spaceport",
                        s3_endpoint_url=s3_server.endpoint_url)
    with make_service(settings) as service, service.client(service.alice) as alice:
        job_id = s3_job(alice)["id"]
        truncated = (preview_workspace / TRAINED_SPLAT).read_bytes()[:5000]
        s3_server.put_object(bucket, f"spaceport/{job_id}/{TRAINED_SPLAT}", truncated)
        service.store.claim_next_job("w")
        service.store.set_state(job_id, "succeeded", worker_id="w")
        response = alice.get(f"/v1/jobs/{job_id}/artifacts/scene.spz")
        assert response.status_code == 500
        detail = response.json()["detail"]
        assert f"s3://{bucket}/spaceport/{job_id}/{TRAINED_SPLAT}" in detail and "/tmp/" not in detail, detail
        assert not [key for key in s3_server.keys(bucket, f"spaceport/{job_id}/") if "/export/" in key]


def read_spz_bytes(data: bytes, folder: Path):  # noqa: ANN201
    (folder / "got.spz").write_bytes(data)
    return read_spz(folder / "got.spz")


def test_metrics_in_prometheus_text(service: Service, alice: httpx.Client) -> None:
    first, second = s3_job(alice)["id"], s3_job(alice)["id"]
    store = service.store
    store.claim_job(first, "w")
    run = store.start_stage_run(first, "sfm", worker_id="w")
    store.finish_stage_run(run.id, "succeeded", seconds=3.5)
    text = alice.get("/metrics").text
    assert 'spaceport_jobs{state="queued"} 1.0' in text and 'spaceport_jobs{state="running"} 1.0' in text
    assert 'spaceport_queue_depth{resource="cpu"} 1.0' in text
    assert 'spaceport_stage_duration_seconds_count{stage="sfm",state="succeeded"} 1.0' in text
    assert 'spaceport_stage_duration_seconds_sum{stage="sfm",state="succeeded"} 3.5' in text
    assert second


def test_openapi_documents_both_request_bodies(service: Service) -> None:
    with service.client() as client:
        spec = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    content = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert "bearer" in json.dumps(spec["components"]["securitySchemes"]).lower()


# -- object storage ----------------------------------------------------------------------------------------


def test_with_s3_storage_uploads_and_artifacts_go_through_the_bucket(
        s3_server: S3Server, tmp_path: Path, photos: list[Path], preview_workspace: Path) -> None:
    bucket = s3_server.make_bucket()
    settings = Settings(data_dir=tmp_path / "data", storage_url=f"s3://{bucket}/spaceport",
                        s3_endpoint_url=s3_server.endpoint_url, max_upload_bytes=200_000)
    with make_service(settings) as service:
        with service.client(service.alice) as alice:
            response = upload(alice, [(f"set/{photo.name}", photo.read_bytes()) for photo in photos])
            assert response.status_code == 201, response.text
            job = response.json()
            prefix = f"spaceport/uploads/{job['id']}/input/"
            assert job["input_url"] == f"s3://{bucket}/{prefix.rstrip('/')}"
            assert s3_server.keys(bucket, prefix) == sorted(f"{prefix}set/{photo.name}" for photo in photos)
            assert not (settings.data_dir / "uploads" / job["id"]).exists()
            stored = service.store.get_job(None, job["id"])
            assert stored.workspace_url == f"s3://{bucket}/spaceport/{job['id']}"
            for rel, data in {"compress/scene.sog": b"SOG" * 10, "sfm/sparse/0/cameras.bin": bytes(24)}.items():
                s3_server.put_object(bucket, f"spaceport/{job['id']}/{rel}", data)
            service.store.claim_next_job("w")
            service.store.set_state(job["id"], "succeeded", worker_id="w")
            listed = {item["name"]: item for item in alice.get(f"/v1/jobs/{job['id']}").json()["artifacts"]}
            assert set(listed) == {"scene.sog", "sparse.zip"} and listed["scene.sog"]["size"] == 30
            assert alice.get(listed["scene.sog"]["url"]).content == b"SOG" * 10
            sparse = zipfile.ZipFile(io.BytesIO(alice.get(listed["sparse.zip"]["url"]).content))
            assert sparse.namelist() == ["cameras.bin"]
            # an export is made from the splat in the bucket and kept there
            copy_export_inputs(preview_workspace, tmp_path / "ws")
            for file in sorted(p for p in (tmp_path / "ws").rglob("*") if p.is_file()):
                s3_server.put_object(bucket, f"spaceport/{job['id']}/{file.relative_to(tmp_path / 'ws').as_posix()}",
                                     file.read_bytes())
            expected = export_splat(preview_workspace, "splat", tmp_path / "cli.splat").read_bytes()
            assert alice.get(f"/v1/jobs/{job['id']}/artifacts/scene.splat").content == expected
            assert f"spaceport/{job['id']}/export/scene.splat" in s3_server.keys(bucket, f"spaceport/{job['id']}/")
