"""The service's web pages (/, /jobs, /jobs/{id}, /jobs/{id}/view) in headless Chromium against a real
`spaceport serve` process: key entry, uploads with their progress bar, refused files, live progress from the event
stream, cancel, downloads and the viewer through link tokens, and another owner seeing nothing.

``SPACEPORT_DOCS_SCREENSHOTS=1`` also writes docs/upload.png and docs/jobs.png.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx
import pytest

from spaceport.api.deps import issue_link_token, read_link_token
from spaceport.formats.gaussians import random_gaussians, write_ply
from spaceport.formats.spz import read_spz
from tests.browser import viewer_screenshot, wait_for_viewer
from tests.processes import ServiceProcess, service_env

JOB_TIMEOUT_MS = 900_000  # one SfM run of 10 small photos on a shared 2-core machine: generous, never asserted
UI_TIMEOUT_MS = 60_000
DOCS = Path(__file__).resolve().parents[1] / "docs"
VIEWPORT = {"width": 1280, "height": 860}


@dataclass
class PagesService:
    url: str
    data: Path
    alice: str  # API keys of two owners
    bob: str
    process: ServiceProcess

    def api(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def create_key(owner: str, data: Path) -> str:
    command = [sys.executable, "-m", "spaceport", "keys", "create", "--owner", owner, "--data", str(data)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=service_env())
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PagesService]:
    data = tmp_path_factory.mktemp("pages") / "data"
    alice, bob = create_key("alice", data), create_key("bob", data)
    process = ServiceProcess(["serve", "--port", "0", "--data", str(data)], service_env(), data.parent / "serve.log")
    process.start(wait_for_url=True)
    try:
        yield PagesService(process.url, data, alice, bob, process)
    finally:
        process.stop()


def sign_in(page, url: str, key: str) -> None:
    """Open ``url``, enter the key in the form the page shows, and wait for the page's content."""
    page.set_viewport_size(VIEWPORT)
    page.goto(url)
    field = page.get_by_label("API key", exact=True)
    field.fill(key)
    field.press("Enter")
    page.locator("#content").wait_for(state="visible", timeout=UI_TIMEOUT_MS)


def save_screenshot(page, name: str, tmp_path: Path) -> Path:
    """The page cut below its content (into docs/ with SPACEPORT_DOCS_SCREENSHOTS=1), without a focus ring."""
    target = DOCS / name if os.environ.get("SPACEPORT_DOCS_SCREENSHOTS") == "1" else tmp_path / name
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    bottom = page.evaluate("() => Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(bottom, 400)})
    page.screenshot(path=str(target), full_page=True, animations="disabled")
    page.set_viewport_size(VIEWPORT)
    return target


def choose_steps(page, steps: str) -> None:
    page.locator(f"label[for=steps-{steps}]").click()


def job_row(page, job_id: str):
    return page.locator(f'#jobs-body tr[data-job-id="{job_id}"]')


def wait_until_final(service: PagesService, row, job_id: str, state: str = "succeeded") -> None:
    """Wait for the row's badge to show a final state; unless it is ``state``, fail with the job's error."""
    row.locator(".badge.succeeded, .badge.failed, .badge.cancelled").wait_for(timeout=JOB_TIMEOUT_MS)
    if row.locator(f".badge.{state}").count() == 0:
        with service.api(service.alice) as api:
            job = api.get(f"/v1/jobs/{job_id}").json()
        pytest.fail(f"job {job_id} ended {job['state']}, not {state}: {job['error']}\n{service.process.tail()}")


def submitted_job_id(page) -> str:
    """The id of the job the upload page just created (from its success message)."""
    done = page.locator("#submit-done")
    done.get_by_role("link", name="Follow it").wait_for(timeout=JOB_TIMEOUT_MS)
    href = done.get_by_role("link", name="Follow it").get_attribute("href")
    return href.rsplit("/", 1)[-1]


def page_errors(page) -> list[str]:
    return [error for error in page.spaceport_errors if "Failed to load resource" not in error]


def test_the_pages_hold_no_data_and_need_no_key(service: PagesService) -> None:
    with httpx.Client(base_url=service.url) as client:
        for path in ("/", "/jobs", "/jobs/anything", "/jobs/anything/view", "/web/style.css", "/web/common.js"):
            response = client.get(path)
            assert response.status_code == 200, path
        page = client.get("/")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert 'value="preview"' in page.text and "webkitdirectory" in page.text
        assert client.get("/web/../settings.py").status_code == 404
        assert client.get("/web/layout.html").status_code == 404  # only scripts and styles are served from web/


def test_link_tokens_are_signed_scoped_and_expire() -> None:
    class FakeJob:
        id, owner_id = "job123", 7

    secret = b"s" * 32
    issued = issue_link_token(secret, FakeJob())
    assert read_link_token(secret, issued.token) == ("job123", 7)
    assert read_link_token(b"t" * 32, issued.token) is None  # another server's secret
    payload, signature = issued.token.split(".")
    forged = issue_link_token(secret, type("Other", (), {"id": "job999", "owner_id": 7})()).token.split(".")[0]
    assert read_link_token(secret, f"{forged}.{signature}") is None  # another job's payload with this signature
    assert read_link_token(secret, issue_link_token(secret, FakeJob(), ttl_s=-1).token) is None  # expired
    for garbage in ("", "abc", "a.b.c", f"{payload}.", f"{payload}.!!!"):
        assert read_link_token(secret, garbage) is None


def test_a_wrong_key_is_refused_and_the_form_says_so(page, service: PagesService) -> None:
    page.set_viewport_size(VIEWPORT)
    page.goto(service.url + "/jobs")
    field = page.get_by_label("API key", exact=True)
    field.fill("sp_not-a-key")
    field.press("Enter")
    error = page.locator("#api-key-error")
    error.get_by_text("This key was not accepted").wait_for(timeout=UI_TIMEOUT_MS)
    assert "not valid" in error.inner_text()
    assert page.locator("#content").is_hidden()
    assert page.evaluate("() => sessionStorage.getItem('spaceport.apiKey')") is None


def test_refused_files_get_a_clear_message(page, service: PagesService, tmp_path: Path,
                                           monstree_small: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    fake = tmp_path / "fake.jpg"
    fake.write_text("a text file named like a photo")
    with service.api(service.alice) as api:
        jobs_before = len(api.get("/v1/jobs").json()["jobs"])
    sign_in(page, service.url + "/", service.alice)

    # caught in the page: the type, by the file's name
    page.set_input_files("#pick-files", [str(notes)])
    files_error = page.locator("#files-error")
    assert "notes.txt: not a file Spaceport takes" in files_error.inner_text()
    page.get_by_role("button", name="Upload and start job").click()
    assert "notes.txt: not a file Spaceport takes" in page.locator("#submit-error").inner_text()

    # caught in the page: photos cannot go to 3DGS only, and a .ply switches the steps to compression
    page.set_input_files("#pick-files", [str(next(monstree_small.iterdir()))])
    assert files_error.inner_text() == ""
    choose_steps(page, "train")
    assert "3DGS only takes a COLMAP project folder" in page.locator("#submit-error").inner_text()
    ply = tmp_path / "scene.ply"
    write_ply(ply, random_gaussians(50, sh_degree=0, seed=1))
    page.set_input_files("#pick-files", [str(ply)])
    assert page.locator("#steps-compress").is_checked()
    assert "Steps set to Compression only" in page.locator("#steps-note").inner_text()

    # the server checks contents: its 4xx detail is shown as it is
    choose_steps(page, "full")
    page.set_input_files("#pick-files", [str(fake)])
    page.get_by_role("button", name="Upload and start job").click()
    submit_error = page.locator("#submit-error")
    submit_error.get_by_text("The server refused the job (415)").wait_for(timeout=UI_TIMEOUT_MS)
    assert "file fake.jpg: its content is not a supported type" in submit_error.inner_text()

    # and a bad setting is the server's 422, naming it
    page.set_input_files("#pick-files", [str(next(monstree_small.iterdir()))])
    page.locator("details.advanced summary").click()
    page.get_by_label("Stage settings").fill("sfm.max_image_sise=480")
    page.get_by_role("button", name="Upload and start job").click()
    submit_error.get_by_text("The server refused the job (422)").wait_for(timeout=UI_TIMEOUT_MS)
    assert "sfm.max_image_sise" in submit_error.inner_text()
    with service.api(service.alice) as api:
        assert len(api.get("/v1/jobs").json()["jobs"]) == jobs_before
    assert page_errors(page) == []


def test_sfm_only_upload_reaches_100_and_the_colmap_model_downloads(page, service: PagesService, tmp_path: Path,
                                                                   monstree_small: Path) -> None:
    sign_in(page, service.url + "/", service.alice)
    photos = sorted(str(path) for path in monstree_small.iterdir())
    page.set_input_files("#pick-files", photos)
    assert page.locator("#selection-summary").inner_text().startswith("10 photos")
    choose_steps(page, "sfm")
    page.get_by_label("Preset").select_option("preview")
    page.locator("details.advanced summary").click()
    page.get_by_label("Stage settings").fill("sfm.max_image_size=480")
    save_screenshot(page, "upload.png", tmp_path)
    page.get_by_role("button", name="Upload and start job").click()
    job_id = submitted_job_id(page)
    upload_bar = page.get_by_role("progressbar", name="Upload progress")
    assert upload_bar.get_attribute("aria-valuenow") == "100"

    page.get_by_role("link", name="all jobs").click()
    row = job_row(page, job_id)
    row.wait_for(timeout=UI_TIMEOUT_MS)
    # every value the row's bar takes, from now on (the job is still running: SfM takes tens of seconds here)
    page.evaluate("""(id) => {
        const bar = document.querySelector(`#jobs-body tr[data-job-id="${id}"] [role=progressbar]`);
        window.seenProgress = [bar.getAttribute('aria-valuenow')];
        new MutationObserver(() => window.seenProgress.push(bar.getAttribute('aria-valuenow')))
            .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
    }""", job_id)
    wait_until_final(service, row, job_id)
    bar = row.get_by_role("progressbar")
    assert bar.get_attribute("aria-valuenow") == "100" and "100 %" in row.inner_text()
    seen = [int(value) for value in page.evaluate("() => window.seenProgress")]
    assert any(0 < value < 100 for value in seen), seen  # it moved live, fed by the event stream
    assert seen == sorted(seen)
    assert "SfM only" in row.inner_text() and "sfm" in row.locator("td.stage").inner_text()

    row.get_by_role("link", name=job_id).click()
    page.get_by_role("heading", name="Results").wait_for(timeout=UI_TIMEOUT_MS)
    link = page.get_by_role("link", name="Download sparse.zip")
    link.wait_for(timeout=UI_TIMEOUT_MS)
    href = link.get_attribute("href")
    assert "token=" in href and service.alice not in href  # the key itself never goes into a URL
    with page.expect_download() as download_info:
        link.click()
    model = tmp_path / "sparse.zip"
    download_info.value.save_as(model)
    with zipfile.ZipFile(model) as archive:
        stems = {PurePosixPath(name).stem for name in archive.namelist()}
    assert {"cameras", "images", "points3D"} <= stems
    assert page.locator("#fact-state").inner_text() == "succeeded"
    assert page.locator("#metrics dt.group").all_text_contents() == ["ingest", "sfm"]  # the stages' figures
    assert "registered" in page.locator("#metrics").inner_text()

    # the viewer's first view of this job is its first photo's camera; with no splat, the viewer page says so
    token = href.split("token=")[1]
    camera = httpx.get(f"{service.url}/v1/jobs/{job_id}/camera", params={"token": token}).json()["camera"]
    assert camera["name"] == Path(photos[0]).name and camera["width"] < camera["height"]  # the photos are portrait
    page.goto(f"{service.url}/jobs/{job_id}/view")
    page.locator("#view-error").get_by_text("has no splat to show yet").wait_for(timeout=UI_TIMEOUT_MS)
    assert page_errors(page) == []


def test_another_owners_key_sees_no_jobs_and_gets_nothing_through_tokens(page, service: PagesService,
                                                                         tmp_path: Path) -> None:
    ply = tmp_path / "splat.ply"
    write_ply(ply, random_gaussians(100, sh_degree=0, seed=2))
    with service.api(service.alice) as alice:
        response = alice.post("/v1/jobs", files=[("job", (None, json.dumps({"steps": "compress"}))),
                                                 ("files", ("splat.ply", ply.read_bytes()))])
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        token = alice.post(f"/v1/jobs/{job_id}/link-token").json()["token"]
    with httpx.Client(base_url=service.url, timeout=60) as anonymous:
        assert anonymous.get(f"/v1/jobs/{job_id}/events", params={"token": token}).status_code == 200
        for path in (f"/v1/jobs/{job_id}/events", f"/v1/jobs/{job_id}/artifacts/logs.zip", f"/v1/jobs/{job_id}/camera"):
            assert anonymous.get(path).status_code == 401, path
            assert anonymous.get(path, params={"token": token[:-2] + "xx"}).status_code == 401, path
        # a token names its job: it opens nothing else, and it never stands for the key
        assert anonymous.get("/v1/jobs/other123/events", params={"token": token}).status_code == 401
        assert anonymous.get(f"/v1/jobs/{job_id}", params={"token": token}).status_code == 401
        assert anonymous.post(f"/v1/jobs/{job_id}/cancel", params={"token": token}).status_code == 401
    with service.api(service.bob) as bob:
        assert bob.post(f"/v1/jobs/{job_id}/link-token").status_code == 404
        assert bob.get(f"/v1/jobs/{job_id}/events", params={"token": token}).status_code == 404  # the header wins
        assert bob.get("/v1/jobs").json()["jobs"] == []

    sign_in(page, service.url + "/jobs", service.bob)
    page.get_by_text("No jobs yet").wait_for(timeout=UI_TIMEOUT_MS)
    assert page.locator("#jobs-body tr").count() == 0
    page.goto(f"{service.url}/jobs/{job_id}")
    page.locator("#job-error").get_by_text(f"No job {job_id} for your key").wait_for(timeout=UI_TIMEOUT_MS)
    assert page.locator("#job-body").is_hidden()


def colmap_project(folder: Path) -> Path:
    """A small COLMAP project as a user keeps it: images/, sparse/0/, and COLMAP's database and a note beside."""
    from tests.synthetic import write_synthetic_scene

    write_synthetic_scene(folder, random_gaussians(200, sh_degree=0, seed=3), num_views=6, num_points=100)
    (folder / "sparse").rename(folder / "model")
    (folder / "sparse").mkdir()
    (folder / "model").rename(folder / "sparse" / "0")
    (folder / "database.db").write_bytes(b"SQLite format 3\x00")
    (folder / ".DS_Store").write_bytes(b"\x00\x00")
    return folder


def test_a_colmap_folder_trains_and_cancel_stops_the_running_job(page, service: PagesService, tmp_path: Path) -> None:
    project = colmap_project(tmp_path / "garden")
    sign_in(page, service.url + "/", service.alice)
    page.set_input_files("#pick-folder", str(project))
    assert page.locator("#steps-train").is_checked()  # a COLMAP project goes with 3DGS only
    names = page.locator("#file-list li").all_inner_texts()
    assert "sparse/0/cameras.bin" in names and "images/view_000.png" in names  # relative folders kept
    summary = page.locator("#selection-summary").inner_text()
    assert "2 skipped" in summary and "database.db" in summary
    page.get_by_label("Preset").select_option("preview")
    page.locator("details.advanced summary").click()
    page.get_by_label("Stage settings").fill("train.steps=20000")  # minutes here: still training when cancelled
    page.get_by_role("button", name="Upload and start job").click()
    job_id = submitted_job_id(page)

    page.get_by_role("link", name="all jobs").click()
    row = job_row(page, job_id)
    row.locator(".badge.running").wait_for(timeout=JOB_TIMEOUT_MS)
    row.locator("td.stage").get_by_text("train").wait_for(timeout=JOB_TIMEOUT_MS)
    page.wait_for_function("""(id) => {  // training reported progress and an estimate of the time left
        const row = document.querySelector(`#jobs-body tr[data-job-id="${id}"]`);
        return Number(row.querySelector('[role=progressbar]').getAttribute('aria-valuenow')) > 0
            && row.querySelectorAll('td.num')[1].textContent !== '—';
    }""", arg=job_id, timeout=JOB_TIMEOUT_MS)
    save_screenshot(page, "jobs.png", tmp_path)
    row.get_by_role("button", name=f"Cancel job {job_id}").click()
    page.locator("#jobs-status").get_by_text(f"job {job_id}").wait_for(timeout=UI_TIMEOUT_MS)
    row.locator(".badge.cancelled").wait_for(timeout=UI_TIMEOUT_MS)
    assert row.get_by_role("button", name=f"Cancel job {job_id}").count() == 0
    with service.api(service.alice) as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["state"] == "cancelled" and job["steps"] == "train" and job["stage"] == "train"
    uploaded = service.data / "uploads" / job_id / "input"
    assert (uploaded / "sparse" / "0" / "points3D.bin").is_file() and (uploaded / "images" / "view_005.png").is_file()
    assert not (uploaded / "database.db").exists()
    assert page_errors(page) == []


def test_the_job_page_embeds_the_report_and_opens_the_viewer(page, service: PagesService, tmp_path: Path) -> None:
    ply = tmp_path / "scene.ply"
    write_ply(ply, random_gaussians(2000, sh_degree=1, seed=4))
    sign_in(page, service.url + "/", service.alice)
    page.set_input_files("#pick-files", [str(ply)])
    page.get_by_role("button", name="Upload and start job").click()
    job_id = submitted_job_id(page)
    page.locator("#submit-done").get_by_role("link", name="Follow it").click()
    page.locator("#job-badge .badge.succeeded").wait_for(timeout=JOB_TIMEOUT_MS)
    page.get_by_role("link", name="Download scene.sog").wait_for(timeout=UI_TIMEOUT_MS)
    assert "makes no report" in page.locator("#report").inner_text()
    # the other formats are offered, made on their first download
    spz_row = page.locator("#artifacts tr", has_text="scene.spz")
    assert "on\u00a0download" in spz_row.inner_text() and "Niantic" in spz_row.inner_text()
    save_screenshot(page, "job_artifacts.png", tmp_path)
    with page.expect_download() as download:
        page.get_by_role("link", name="Download scene.spz").click()
    assert len(read_spz(Path(download.value.path())).means) == 2000  # a bare .ply: nothing pruned

    # a report in the workspace is embedded, sandboxed, through a link token
    report = service.data / "workspaces" / job_id / "report" / "index.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("<!doctype html><title>r</title><h1>Report of the page test</h1>")
    page.reload()
    frame = page.locator("iframe.report-frame")
    frame.wait_for(timeout=UI_TIMEOUT_MS)
    assert "token=" in frame.get_attribute("src") and frame.get_attribute("sandbox") == "allow-scripts"
    page.frame_locator("iframe.report-frame").get_by_text("Report of the page test").wait_for(timeout=UI_TIMEOUT_MS)
    shutil.rmtree(report.parent)

    page.get_by_role("link", name="Open viewer").click()
    page.wait_for_url(f"**/jobs/{job_id}/view")
    state = wait_for_viewer(page)
    assert state["splatCount"] == 2000
    canvas = page.locator("canvas.spv-canvas").bounding_box()
    assert canvas["width"] == VIEWPORT["width"] and canvas["height"] > VIEWPORT["height"] / 2  # it fills the page
    assert viewer_screenshot(page).std() > 10  # the splat is drawn, not only the background
    assert page_errors(page) == []
