"""Issue 11, the report page: report/index.html from a real preview run, its figures decoded, and the page opened
from disk in headless Chromium; sections follow the job's step selection."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spaceport.formats import (
    read_evaluation,
    read_frames,
    read_job,
    read_metrics,
    read_report,
    read_sfm_report,
    read_sog,
    write_frames,
    write_job,
    write_sfm_report,
)
from spaceport.formats.frames import DroppedRecord
from spaceport.progress import NullProgress
from spaceport.report import ReportConfig, run_report
from spaceport.report import html as report_html
from spaceport.report.plots import BLUE, ORANGE, SfmGeometry, read_sfm_geometry, top_view_basis
from spaceport.workspace import Workspace
from tests.browser import VIEWER_TIMEOUT_MS

DOCS = Path(__file__).resolve().parents[1] / "docs"
ALL_SECTIONS = {"summary", "viewer", "views", "training", "sfm", "sizes", "stages"}


def copy_workspace(source: Path, target: Path) -> Workspace:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("ckpt", ".lock"))
    return Workspace(target)


def write_page(ws: Workspace) -> str:
    run_report(ws, ReportConfig(), NullProgress())
    return (ws.report_dir / "index.html").read_text()


def sections(page: str) -> dict[str, str]:
    """{section id: its HTML}; the page's sections are not nested."""
    return dict(re.findall(r'<section id="(\w+)"[^>]*>(.*?)</section>', page, flags=re.DOTALL))


def text_of(fragment: str) -> str:
    fragment = re.sub(r'srcdoc="[^"]*"', "", fragment)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).replace("\xa0", " ").split())


def inlined_images(fragment: str) -> list[tuple[str, bytes]]:
    """(MIME type, decoded bytes) of every <img src="data:..."> in ``fragment``."""
    found = re.findall(r'<img[^>]*\ssrc="data:([\w/+.-]+);base64,([A-Za-z0-9+/=]+)"', fragment)
    return [(mime, base64.b64decode(data)) for mime, data in found]


@pytest.fixture(scope="module")
def report_ws(preview_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = copy_workspace(preview_workspace, tmp_path_factory.mktemp("report_page") / "W")
    write_page(ws)
    return ws


@pytest.fixture(scope="module")
def page_html(report_ws: Workspace) -> str:
    return (report_ws.report_dir / "index.html").read_text()


# -- the page's content, without a browser ------------------------------------------------------------------------


def test_the_page_shows_every_section_with_the_workspace_figures(report_ws: Workspace, page_html: str) -> None:
    found = sections(page_html)
    assert set(found) == ALL_SECTIONS
    report, sfm = read_report(report_ws.report_dir), read_sfm_report(report_ws.sfm_dir)

    summary = text_of(found["summary"])
    assert f"How the quality score of {report.quality_score} is made" in summary
    for part in report.score_parts.values():
        assert f"{part.earned:.1f} / {part.possible:g}" in summary

    sfm_text = text_of(found["sfm"])
    assert f"Registered photos {sfm.registered} / {sfm.total}" in sfm_text
    assert f"Sparse points {sfm.points3d:,}" in sfm_text
    assert f"Mean reprojection error {sfm.mean_reprojection_error_px:.3f} px" in sfm_text
    assert f"Matcher / mapper {sfm.matcher} / {sfm.mapper}" in sfm_text
    assert "None: every photo was used" in sfm_text

    evaluation = read_evaluation(report_ws.train_dir)
    views_text = text_of(found["views"])
    assert evaluation.held_out and views_text.startswith("Held-out views")
    for view in evaluation.views:
        assert f"{view.name} PSNR {view.psnr:.2f} dB · SSIM {view.ssim:.3f}" in views_text

    training_text = text_of(found["training"])
    last = [m for m in read_metrics(report_ws.train_dir) if m.loss is not None][-1]
    assert f"Steps {last.step:,}" in training_text and f"Final loss {last.loss:.4f}" in training_text

    compress = report.checks["compress"]
    sizes_text = text_of(found["sizes"])
    for size in (compress["ply_bytes"], compress["sog_bytes"]):
        assert report_html.format_bytes(size).replace("\xa0", " ") in sizes_text
    assert f"{compress['size_ratio']:.1f}× smaller" in sizes_text
    result = report_ws.stage_result("compress")
    pruned, trained = result.metrics["num_pruned"], result.metrics["num_gaussians_in"]
    assert compress["num_pruned"] == pruned and trained - pruned == compress["num_gaussians"]
    assert f"{pruned:,} of {trained:,} Gaussians" in sizes_text
    assert f"{result.metrics['num_sh_bands_0']:,} keep 0 bands" in sizes_text

    stages_text = text_of(found["stages"])
    for stage, timing in report.stages.items():
        row = f"{report_html.STAGE_TITLE[stage]} done {report_html.format_seconds(timing.seconds)}"
        assert row.replace("\xa0", " ") in stages_text
    assert "invalid" not in stages_text


def test_the_viewer_is_inlined_with_the_workspace_sog(report_ws: Workspace, page_html: str) -> None:
    viewer = sections(page_html)["viewer"]
    srcdoc = html.unescape(re.search(r'<iframe[^>]*srcdoc="([^"]*)"', viewer).group(1))
    # the viewer's own self-contained page (spaceport export --format html), the whole SOG inside
    assert base64.b64encode(report_ws.sog_path.read_bytes()).decode("ascii") in srcdoc
    assert "mountViewer" in srcdoc


def test_curves_are_real_svg_plots_of_the_metrics(report_ws: Workspace, page_html: str) -> None:
    curves = inlined_images(sections(page_html)["training"])
    assert [mime for mime, _ in curves] == ["image/svg+xml"] * 3  # loss, held-out PSNR, Gaussians
    loss_points = [m for m in read_metrics(report_ws.train_dir) if m.loss is not None]
    root = ElementTree.fromstring(curves[0][1])
    assert root.tag.endswith("svg") and float(root.get("width").removesuffix("pt")) > 200
    # the loss line: a path stroked in the curve colour through every logged step
    lines = [p.get("d") for p in root.iter("{http://www.w3.org/2000/svg}path")
             if f"stroke: {BLUE}" in (p.get("style") or "")]
    assert lines and max(d.count(" L ") for d in lines) >= len(loss_points) - 1


def test_the_top_view_shows_points_and_both_kinds_of_camera(report_ws: Workspace, page_html: str) -> None:
    [(mime, data)] = inlined_images(sections(page_html)["sfm"])
    assert mime == "image/png"
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 600 and pixels.std() > 10

    def count_near(hex_colour: str) -> int:
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).sum(axis=2) < 30).sum())

    assert count_near(BLUE) > 200  # training cameras and their arrows
    assert count_near(ORANGE) > 50  # the held-out cameras (eval.json has two)


def test_the_top_view_looks_down_the_photos_up_direction(report_ws: Workspace) -> None:
    geometry = read_sfm_geometry(report_ws.sparse_dir)
    basis = top_view_basis(geometry)
    assert np.allclose(basis @ basis.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(basis) == pytest.approx(1.0)  # right-handed: seen from above, not mirrored
    # handheld photos are roughly upright: each camera's up (-y) is near the chosen up
    assert np.all(-geometry.down @ basis[2] > 0.8)


def test_top_view_basis_recovers_a_known_up_and_keeps_a_ring_round() -> None:
    up = np.array([0.3, -0.9, 0.2])
    up /= np.linalg.norm(up)
    side = np.cross(up, [1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    other = np.cross(up, side)
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    centres = 5.0 * (np.outer(np.cos(angles), side) + np.outer(np.sin(angles), other)) + 2.0 * up
    forward = -(centres - 2.0 * up) / 5.0  # each camera looks at the ring's centre
    down = np.tile(-up, (len(angles), 1))
    geometry = SfmGeometry([f"{i}.jpg" for i in range(12)], centres, forward, down, np.zeros((0, 3)),
                           np.zeros((0, 3), np.uint8))
    basis = top_view_basis(geometry)
    assert np.allclose(basis[2], up)
    radii = np.linalg.norm((centres - centres.mean(axis=0)) @ basis[:2].T, axis=1)
    assert np.allclose(radii, 5.0)


# -- what appears depends on the steps that ran --------------------------------------------------------------------


def test_an_sfm_only_job_has_no_training_or_compression_sections(preview_workspace: Path, tmp_path: Path) -> None:
    ws = copy_workspace(preview_workspace, tmp_path / "W")
    write_job(ws.root, read_job(ws.root).model_copy(update={"steps": "sfm"}))
    for folder in (ws.train_dir, ws.compress_dir, ws.report_dir):
        shutil.rmtree(folder)
    found = sections(write_page(ws))
    assert set(found) == {"summary", "sfm", "stages"}
    assert len(inlined_images(found["sfm"])) == 1  # the top view
    assert "Photos registered 10 / 10" in text_of(found["summary"])
    assert "Training" not in text_of(found["stages"]) and "Compression" not in text_of(found["stages"])


def test_a_compress_only_job_shows_sizes_and_the_viewer(preview_workspace: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "C")
    ws.input_dir.mkdir(parents=True)
    shutil.copy(preview_workspace / "train" / "splat.ply", ws.input_dir / "splat.ply")
    shutil.copytree(preview_workspace / "compress", ws.compress_dir)
    write_job(ws.root, read_job(preview_workspace).model_copy(update={"steps": "compress"}))
    found = sections(write_page(ws))
    assert set(found) == {"summary", "viewer", "sizes", "stages"}
    ratio = (ws.input_dir / "splat.ply").stat().st_size / ws.sog_path.stat().st_size
    assert f"{ratio:.1f}× smaller" in text_of(found["sizes"])
    assert f"holds {len(read_sog(ws.sog_path)):,} Gaussians" in text_of(found["sizes"])


def test_photos_left_out_are_listed_with_their_reasons(preview_workspace: Path, tmp_path: Path) -> None:
    ws = copy_workspace(preview_workspace, tmp_path / "W")
    frames = read_frames(ws.images_dir)
    duplicate = DroppedRecord(source="input/IMG_1025 copy.jpg", reason="identical to input/IMG_1025.jpg; dropped")
    write_frames(ws.images_dir, frames.model_copy(update={"dropped": [duplicate]}))
    sfm = read_sfm_report(ws.sfm_dir)
    write_sfm_report(ws.sfm_dir, sfm.model_copy(update={"registered": 9, "unregistered": ["IMG_1040.jpg"],
                                                        "model_sizes": [9, 1]}))
    sfm_text = text_of(sections(write_page(ws))["sfm"])
    assert "input/IMG_1025 copy.jpg ingest identical to input/IMG_1025.jpg; dropped" in sfm_text
    assert "IMG_1040.jpg sfm SfM made 2 separate models (photos in each: 9, 1)" in sfm_text


def test_a_kept_earlier_splat_is_named_in_the_training_facts(preview_workspace: Path, tmp_path: Path) -> None:
    ws = copy_workspace(preview_workspace, tmp_path / "W")
    metrics_path = ws.train_dir / "metrics.jsonl"
    lines = metrics_path.read_text().splitlines()
    final = json.loads(lines[-1])
    assert "eval_psnr" in final and "kept_step" not in final
    during = [{"step": 500, "eval_psnr": final["eval_psnr"] - 1.0}, {"step": 1000, "eval_psnr": final["eval_psnr"]},
              {"step": 1250, "eval_psnr": final["eval_psnr"] - 0.5}]
    final["kept_step"] = 1000
    metrics_path.write_text("\n".join([*lines[:-1], *map(json.dumps, during), json.dumps(final)]) + "\n")
    training = text_of(sections(write_page(ws))["training"])
    assert "Splat kept from step 1,000, its best held-out evaluation" in training
    assert "Splat kept from" not in text_of(sections(write_page(copy_workspace(preview_workspace, tmp_path / "V")))[
        "training"])


def test_a_big_sog_gets_the_view_command_instead_of_an_embedded_viewer(report_ws: Workspace, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_html, "EMBED_VIEWER_MAX_BYTES", report_ws.sog_path.stat().st_size - 1)
    page = report_html.render_report_page(report_ws, read_report(report_ws.report_dir))
    viewer = sections(page)["viewer"]
    assert "<iframe" not in viewer
    assert f"spaceport view {report_ws.root}" in text_of(viewer)


def test_an_unreadable_file_is_shown_as_a_problem_not_a_failed_report(preview_workspace: Path,
                                                                      tmp_path: Path) -> None:
    ws = copy_workspace(preview_workspace, tmp_path / "W")
    (ws.train_dir / "eval.json").write_text("{not json")
    found = sections(write_page(ws))
    assert "The held-out views could not be shown" in text_of(found["views"])
    assert "eval.json" in text_of(found["views"])
    assert len(inlined_images(found["training"])) >= 2  # the curves do not need eval.json


# -- in a real browser, from disk -----------------------------------------------------------------------------------


def test_the_page_opens_from_disk_with_renders_curves_and_a_live_viewer(report_ws: Workspace, page,
                                                                        tmp_path: Path) -> None:
    page.goto((report_ws.report_dir / "index.html").as_uri())
    # at the fixture's 640 px the page reflows: nothing wider than the window
    assert page.evaluate("document.documentElement.scrollWidth") <= 640
    page.set_viewport_size({"width": 1200, "height": 900})
    pictures = page.locator("#views img, #training img.curve, #top-view")
    assert pictures.count() == 2 * len(read_evaluation(report_ws.train_dir).views) + 3 + 1
    for index in range(pictures.count()):
        picture = pictures.nth(index)
        picture.scroll_into_view_if_needed()
        box = picture.bounding_box()
        assert box and box["width"] > 150 and box["height"] > 150, (picture.get_attribute("alt"), box)
        assert picture.evaluate("img => img.complete && img.naturalWidth > 0"), picture.get_attribute("alt")

    frame = page.frame_locator("iframe.viewer-frame")
    page.locator("iframe.viewer-frame").scroll_into_view_if_needed()
    viewer_frame = next(f for f in page.frames if f != page.main_frame)
    viewer_frame.wait_for_function("() => window.spaceportViewer && (spaceportViewer.ready || spaceportViewer.error)",
                                   timeout=VIEWER_TIMEOUT_MS)
    state = viewer_frame.evaluate("() => ({error: spaceportViewer.error, count: spaceportViewer.splatCount})")
    assert state == {"error": None, "count": len(read_sog(report_ws.sog_path))}
    assert frame.locator("canvas").count() == 1

    # the section links work from the keyboard
    page.keyboard.press("Home")
    page.locator("nav a[href='#sfm']").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => location.hash === '#sfm'")
    assert page.spaceport_errors == []

    page.evaluate("window.scrollTo(0, 0)")
    screenshot = tmp_path / "report.png"
    page.screenshot(path=screenshot, full_page=True)
    assert Image.open(screenshot).height > 2000
    if os.environ.get("SPACEPORT_UPDATE_DOCS"):  # refresh the README's screenshot: SPACEPORT_UPDATE_DOCS=1 pytest ...
        DOCS.mkdir(exist_ok=True)
        shutil.copy(screenshot, DOCS / "report.png")
