"""`spaceport` command line: run the pipeline in-process, compress a PLY, validate a workspace."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from spaceport.pipeline import STEP_STAGES, PipelineConfig, run_pipeline
from spaceport.progress import RichProgress
from spaceport.workspace import SpaceportError, Workspace

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)

# CLI flag -> dotted stage field, for the options users reach for most; anything else via --set
SHORTCUTS = {
    "max_size": "ingest.max_size",
    "matcher": "sfm.matcher",
    "mapper": "sfm.mapper",
    "camera_mode": "sfm.camera_mode",
    "vocab_tree": "sfm.vocab_tree_path",
    "min_registered": "sfm.min_registered_fraction",
    "strategy": "train.strategy",
    "train_steps": "train.steps",
    "backend": "train.backend",
    "sh_bands": "compress.sh_bands",
}


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _fail(message: str, code: int = 2) -> None:
    # soft_wrap: a path in the message must stay whole for people who copy it (and for tests)
    console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


@app.command()
def run(
    input: Path = typer.Argument(..., help="photos folder, .zip, video, previous workspace (--steps train) "
                                           "or .ply (--steps compress)"),
    output: Path = typer.Option(..., "-o", "--output", help="workspace folder (created; re-run to resume)"),
    steps: str = typer.Option("full", help="full | sfm | train | compress"),
    preset: str = typer.Option("standard", help="preview (CPU-sized) | standard (GPU, full quality)"),
    force: list[str] = typer.Option([], "--force", help="redo this stage (and the later ones); repeatable"),
    set_: list[str] = typer.Option([], "--set", help="any stage option as STAGE.FIELD=VALUE; repeatable"),
    max_size: int | None = typer.Option(None, help="downscale photos to this long side (px)"),
    matcher: str | None = typer.Option(None, help="auto | exhaustive | sequential | spatial | vocabtree"),
    mapper: str | None = typer.Option(None, help="incremental | global"),
    camera_mode: str | None = typer.Option(None, help="auto | exif | single | per-image"),
    vocab_tree: str | None = typer.Option(None, help="vocabulary tree file for retrieval matching"),
    min_registered: float | None = typer.Option(None, help="fail if SfM registers a smaller fraction"),
    strategy: str | None = typer.Option(None, help="default | mcmc"),
    train_steps: int | None = typer.Option(None, help="training steps"),
    backend: str | None = typer.Option(None, help="auto | gsplat | torch"),
    sh_bands: int | None = typer.Option(None, help="SH bands kept in the SOG (0-3)"),
) -> None:
    """Run the stages of a step selection on INPUT into workspace OUTPUT (resumable)."""
    if steps not in STEP_STAGES:
        _fail(f"--steps {steps}: choose one of {', '.join(STEP_STAGES)}")
    if preset not in ("preview", "standard"):
        _fail(f"--preset {preset}: choose preview or standard")
    config = PipelineConfig(steps=steps, preset=preset)
    shortcuts = {"max_size": max_size, "matcher": matcher, "mapper": mapper, "camera_mode": camera_mode,
                 "vocab_tree": vocab_tree, "min_registered": min_registered, "strategy": strategy,
                 "train_steps": train_steps, "backend": backend, "sh_bands": sh_bands}
    try:
        for name, value in shortcuts.items():
            if value is not None:
                config = config.with_override(SHORTCUTS[name], value)
        for item in set_:
            key, sep, raw = item.partition("=")
            if not sep:
                _fail(f"--set {item}: expected STAGE.FIELD=VALUE")
            config = config.with_override(key, _parse_value(raw))
        ws = Workspace(output)
        results = run_pipeline(ws, config, _rich_progress, source=input, force=tuple(force))
    except SpaceportError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: finished stages are kept; run the same command to resume[/yellow]")
        raise typer.Exit(130) from None
    except Exception as exc:  # a stage's own validation error types (pydantic) are user errors too
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            _fail(f"invalid option: {exc}")
        raise
    _print_results(ws, results)


def _rich_progress(stage: str, logger: logging.Logger) -> RichProgress:
    return RichProgress(logger=logger, console=console)


def _print_results(ws: Workspace, results: list) -> None:
    table = Table(title=f"spaceport: {ws.root}")
    for column in ("stage", "status", "seconds", "key metrics"):
        table.add_column(column)
    for result in results:
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in list(result.metrics.items())[:6])
        table.add_row(result.stage, "resumed (done before)" if result.skipped else "done",
                      f"{result.seconds:.1f}", metrics)
    Console().print(table)


@app.command()
def compress(
    ply: Path = typer.Argument(..., help="INRIA-layout 3DGS .ply"),
    output: Path = typer.Option(..., "-o", "--output", help="output .sog"),
    sh_bands: int = typer.Option(3, help="SH bands to keep (0-3)"),
    unbundled: bool = typer.Option(False, help="also write meta.json + .webp files beside the .sog"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
) -> None:
    """Compress a .ply to PlayCanvas SOG."""
    try:
        from spaceport.compress import CompressConfig, compress_ply

        config = CompressConfig(sh_bands=sh_bands, unbundled=unbundled, device=device)
        result = compress_ply(ply, output, config, RichProgress(console=console))
    except SpaceportError as exc:
        _fail(str(exc))
    except ImportError as exc:
        _fail(f"compression is not available yet in this build ({exc})")
    console.print(result if not hasattr(result, "metrics") else result.metrics)


@app.command()
def validate(
    workspace: Path = typer.Argument(..., help="a finished workspace"),
    min_score: float = typer.Option(60.0, help="exit non-zero below this quality score"),
) -> None:
    """Recompute the quality report from the workspace's files and check it."""
    try:
        from spaceport.report import validate_workspace

        report = validate_workspace(Workspace(workspace))
    except SpaceportError as exc:
        _fail(str(exc))
    except ImportError as exc:
        _fail(f"validation is not available yet in this build ({exc})")
    score = report["quality_score"]
    Console().print_json(json.dumps({"quality_score": score, "checks": report.get("checks", {})}))
    if score < min_score:
        _fail(f"quality score {score:.1f} is below {min_score}", code=1)


def main() -> None:  # pragma: no cover - console entry point
    app(sys.argv[1:])
