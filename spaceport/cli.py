"""`spaceport` command line: run the pipeline in-process, print configs, compress, validate, view, serve."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from spaceport.errors import SpaceportError
from spaceport.progress import RichProgress

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)

# CLI flag -> dotted setting, for the options users reach for most; anything else via --set
SHORTCUTS = {
    "max_size": "ingest.max_size",
    "matcher": "sfm.matcher",
    "mapper": "sfm.mapper",
    "camera_mode": "sfm.camera_mode",
    "up": "sfm.up",
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


def _settings(set_: list[str], shortcuts: dict[str, Any]) -> dict[str, Any]:
    """--set STAGE.FIELD=VALUE items and the shortcut flags as one {"stage.field": value} mapping."""
    settings = {SHORTCUTS[name]: value for name, value in shortcuts.items() if value is not None}
    for item in set_:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            _fail(f"--set {item}: expected STAGE.FIELD=VALUE, e.g. train.steps=3000")
        settings[key] = _parse_value(raw)
    return settings


def _resolve(preset: str, settings: dict[str, Any]):
    from spaceport.presets import resolve_config

    try:
        return resolve_config(preset, settings)
    except SpaceportError as exc:
        _fail(str(exc))


@app.command()
def run(
    input: Path = typer.Argument(..., help="photos folder, .zip, video, previous workspace (--steps train) "
                                           "or .ply (--steps compress)"),
    output: Path = typer.Option(..., "-o", "--output", help="workspace folder (created; re-run to resume)"),
    steps: str = typer.Option("full", help="full | sfm | train | compress"),
    preset: str = typer.Option(
        "standard", help="preview (CPU-sized) | standard (GPU, ~2 min) | quality (GPU, longer, coarse to fine)"),
    force: list[str] = typer.Option([], "--force", help="redo this stage (and the later ones); repeatable"),
    set_: list[str] = typer.Option([], "--set", help="any setting as STAGE.FIELD=VALUE (see spaceport config); "
                                                     "repeatable"),
    max_size: int | None = typer.Option(None, help="downscale photos to this long side (px)"),
    matcher: str | None = typer.Option(None, help="auto | exhaustive | sequential | spatial | vocabtree"),
    mapper: str | None = typer.Option(None, help="incremental | global"),
    camera_mode: str | None = typer.Option(None, help="auto | exif | single | per-image"),
    up: str | None = typer.Option(None, help="the scene's up: auto (from the cameras) | none | +x,-y,+z... | x,y,z"),
    vocab_tree: str | None = typer.Option(None, help="vocabulary tree file for retrieval matching"),
    min_registered: float | None = typer.Option(None, help="fail if SfM registers a smaller fraction"),
    strategy: str | None = typer.Option(None, help="default | mcmc"),
    train_steps: int | None = typer.Option(None, help="training steps"),
    backend: str | None = typer.Option(None, help="auto | gsplat | torch"),
    sh_bands: int | None = typer.Option(None, help="SH bands kept in the SOG (0-3)"),
) -> None:
    """Run the stages of a step selection on INPUT into workspace OUTPUT (resumable)."""
    from spaceport.formats.job import STEP_STAGES

    if steps not in STEP_STAGES:
        _fail(f"--steps {steps}: choose one of {', '.join(STEP_STAGES)}")
    settings = _settings(set_, {"max_size": max_size, "matcher": matcher, "mapper": mapper,
                                "camera_mode": camera_mode, "up": up, "vocab_tree": vocab_tree,
                                "min_registered": min_registered, "strategy": strategy,
                                "train_steps": train_steps, "backend": backend, "sh_bands": sh_bands})
    config = _resolve(preset, settings)  # every setting is checked before anything is written

    from spaceport.workspace import Workspace

    ws = Workspace(output)
    try:
        # the lock first, the stages' heavy imports (torch, pycolmap) after: a busy workspace is reported at once
        with ws.lock("spaceport run", log=ws.stage_logger("pipeline").info):
            from spaceport.pipeline import run_pipeline

            results = run_pipeline(ws, steps, config, _rich_progress, source=input, force=tuple(force),
                                   preset=preset, settings=settings, holder=None)
    except SpaceportError as exc:
        _fail(str(exc), code=exc.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: finished stages are kept; run the same command to resume[/yellow]")
        raise typer.Exit(130) from None
    _print_results(ws, results)


@app.command("config")
def show_config(
    preset: str = typer.Option("standard", help="preview | standard | quality"),
    set_: list[str] = typer.Option([], "--set", help="a setting as STAGE.FIELD=VALUE; repeatable"),
) -> None:
    """Print the resolved pipeline config (a preset with --set applied) as JSON."""
    config = _resolve(preset, _settings(set_, {}))
    print(config.model_dump_json(indent=2))


def _rich_progress(stage: str, logger: logging.Logger) -> RichProgress:
    return RichProgress(logger=logger, console=console)


def _print_results(ws, results: list) -> None:
    """The table of stages, then what a person wants next: the figures, where the files are, how to look."""
    table = Table(title=f"spaceport: {ws.root}")
    for column in ("stage", "status", "seconds", "key metrics"):
        table.add_column(column)
    for result in results:
        shown = [(k, v) for k, v in result.metrics.items() if v is not None][:6]
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown)
        table.add_row(result.stage, "resumed (done before)" if result.skipped else "done",
                      f"{result.seconds:.1f}", metrics)
    out = Console()
    out.print(table)
    for line in _summary_lines(ws, results):
        out.print(line, highlight=False, soft_wrap=True)


def _summary_lines(ws, results: list) -> list[str]:
    from spaceport.formats import kept_step, read_evaluation, read_metrics, read_sfm_report

    lines = []
    if ws.is_done("sfm"):
        sfm = read_sfm_report(ws.sfm_dir)
        lines.append(f"registered {sfm.registered}/{sfm.total} photos, mean reprojection error "
                     f"{sfm.mean_reprojection_error_px:.2f} px")
        if sfm.warnings:
            more = f" (+{len(sfm.warnings) - 1} more in sfm/report.json)" if len(sfm.warnings) > 1 else ""
            lines.append(f"[yellow]sfm warning: {escape(sfm.warnings[0])}{more}[/yellow]")
    if ws.is_done("train"):
        evaluation = read_evaluation(ws.train_dir)
        which = "held-out" if evaluation.held_out else "training (no held-out views)"
        nerf_w = evaluation.protocol != "full-image"
        protocol = " (right halves, appearance fitted on the left: NeRF-W)" if nerf_w else ""
        kept = kept_step(read_metrics(ws.train_dir))
        kept_note = f", the splat of step {kept:,} (its best evaluation)" if kept is not None else ""
        lines.append(f"{which} PSNR {evaluation.psnr:.2f} dB, SSIM {evaluation.ssim:.3f} on {evaluation.num_views} "
                     f"views{protocol}{kept_note}")
    sizes = [f"{name} {path.stat().st_size / 1e6:.1f} MB" for name, path in (("PLY", ws.splat_ply),
                                                                               ("SOG", ws.sog_path)) if path.exists()]
    if sizes:
        lines.append("sizes: " + ", ".join(sizes))
    lines.append("time: " + ", ".join(f"{r.stage} {r.seconds:.1f} s" for r in results)
                 + f" (total {sum(r.seconds for r in results):.1f} s)")
    for label, path in (("splat", ws.sog_path), ("PLY", ws.splat_ply), ("report", ws.report_dir / "index.html")):
        if path.exists():
            lines.append(f"{label}: {path}")
    if ws.sog_path.exists():
        lines.append(f"open it: spaceport view {ws.root}")
    return lines


@app.command()
def compress(
    ply: Path = typer.Argument(..., help="INRIA-layout 3DGS .ply"),
    output: Path = typer.Option(..., "-o", "--output", help="output .sog"),
    sh_bands: int = typer.Option(3, help="SH bands to keep (0-3)"),
    unbundled: bool = typer.Option(False, help="also write meta.json + .webp files beside the .sog"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
) -> None:
    """Compress a .ply to PlayCanvas SOG."""
    from pydantic import ValidationError

    from spaceport.compress import CompressConfig, compress_ply

    try:
        config = CompressConfig(sh_bands=sh_bands, unbundled=unbundled, device=device)
        result = compress_ply(ply, output, config, RichProgress(console=console))
    except ValidationError as exc:
        _fail(f"invalid option: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")
    except SpaceportError as exc:
        _fail(str(exc))
    Console().print_json(json.dumps(result.metrics))


@app.command()
def validate(
    workspace: Path = typer.Argument(..., help="a finished workspace"),
    min_score: float = typer.Option(60.0, help="exit non-zero below this quality score"),
) -> None:
    """Recompute the quality report from the workspace's files and check it."""
    from spaceport.report import validate_workspace
    from spaceport.workspace import Workspace

    try:
        report = validate_workspace(Workspace(workspace))
    except SpaceportError as exc:
        _fail(str(exc))
    Console().print_json(json.dumps({"quality_score": report.quality_score, "checks": report.checks,
                                     "mismatches": report.mismatches}))
    if report.quality_score < min_score:
        _fail(f"quality score {report.quality_score:.1f} is below {min_score}", code=1)


def main() -> None:  # pragma: no cover - console entry point
    # OpenMP's default spin-waiting makes torch's CPU renderer ~30x slower when the machine is shared with other
    # busy processes (measured: 13.8 s vs 0.48 s per step); it must be set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app(sys.argv[1:])


# -- spaceport keys ------------------------------------------------------------------------------------------

keys_app = typer.Typer(add_completion=False, no_args_is_help=True, help="API keys of the job service.")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    owner: str = typer.Option(..., "--owner", help="who the key belongs to (created if new); a key sees only "
                                                   "its owner's jobs"),
    data: Path | None = typer.Option(None, "--data", help="the service's data folder (SQLite file); default "
                                                          "SPACEPORT_DATA_DIR or ./spaceport-data"),
) -> None:
    """Create an API key for OWNER; the key is printed alone on the last line (only its hash is stored)."""
    from spaceport.jobs.store import open_store
    from spaceport.settings import Settings

    try:
        settings = Settings(data_dir=data) if data is not None else Settings()
        store = open_store(settings.resolved_database_url)
        try:
            key = store.create_api_key(store.ensure_owner(owner).id)
        finally:
            store.close()
    except SpaceportError as exc:
        _fail(str(exc))
    console.print(f"API key for owner [bold]{escape(owner)}[/bold] (shown only now; send it as "
                  "'Authorization: Bearer KEY' or set SPACEPORT_API_KEY):")
    print(key)


# -- spaceport serve / worker --------------------------------------------------------------------------------


def _log_service_to_stderr(slot: str | None = None) -> None:
    where = f" [{slot}]" if slot else ""  # the slot processes of a gpu worker share its output
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s{where} %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # every process checks the schema at start


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port (0: any free port)"),
    data: Path | None = typer.Option(None, "--data", help="folder of the SQLite file, uploads and workspaces; "
                                                          "default SPACEPORT_DATA_DIR or ./spaceport-data"),
    import_root: list[Path] = typer.Option([], "--import-root", help="folder jobs may read with file:// "
                                                                     "input URLs; repeatable"),
    cpu_slots: int | None = typer.Option(None, "--cpu-slots", min=0, help="CPU stages run at once by the embedded "
                                                                          "worker (default 1)"),
    gpus: str | None = typer.Option(None, "--gpus", help="GPUs of the embedded worker: all | none | 0,1, one "
                                                         "training at a time on each (default SPACEPORT_GPUS, else "
                                                         "all; no GPU: one slot training on the CPU)"),
) -> None:
    """Start the job service: the HTTP API and, without SPACEPORT_BROKER_URL, a worker pool in this process.

    The URL is printed alone on stdout once the port is bound. Jobs queued or running when it stops are picked up
    again at the next start.
    """
    from spaceport.jobs.service import serve as run_service
    from spaceport.settings import Settings

    overrides: dict[str, Any] = {}
    if data is not None:
        overrides["data_dir"] = data.resolve()
    if import_root:
        overrides["import_roots"] = [root.resolve() for root in import_root]
    if cpu_slots is not None:
        overrides["cpu_slots"] = cpu_slots
    if gpus is not None:
        overrides["gpus"] = gpus
    _log_service_to_stderr()

    def announce(url: str) -> None:
        mode = "Celery workers" if settings.broker_url else "the embedded worker"
        console.print(f"Spaceport API at [bold]{url}[/bold] (docs: {url}/docs), jobs run by {mode}; data in "
                      f"{escape(str(settings.data_dir.resolve()))}", highlight=False, soft_wrap=True)
        print(url, flush=True)

    try:
        settings = Settings(**overrides)
        settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
        if not settings.broker_url:  # the embedded worker's GPU slots: a GPU that is not here fails now
            from spaceport.gpus import gpu_slots

            gpu_slots(settings.gpus)
        run_service(settings, host, port, announce)
    except SpaceportError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port (0: any free)")


@app.command()
def worker(
    queues: str = typer.Option(..., "--queues", help="cpu | gpu | cpu,gpu: the stages this worker runs"),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="stages run at once (with the gpu queue: per "
                                                                    "GPU slot)"),
    gpus: str | None = typer.Option(None, "--gpus", help="with the gpu queue: all | none | 0,1: one worker process "
                                                         "per GPU, pinned to it (default SPACEPORT_GPUS, else all; "
                                                         "no GPU: one process training on the CPU)"),
    slot: str | None = typer.Option(None, "--slot", hidden=True, help="internal: this process is the slot of a gpu "
                                                                      "worker (spaceport.jobs.slot_workers)"),
) -> None:
    """A Celery worker (needs SPACEPORT_BROKER_URL, and a database and storage the API shares: see the README)."""
    from spaceport.settings import Settings

    settings = Settings()
    if not settings.broker_url:
        _fail("spaceport worker needs SPACEPORT_BROKER_URL=redis://HOST:6379/0 (and the API's "
              "SPACEPORT_DATABASE_URL and SPACEPORT_STORAGE_URL)")
    queue_list = [queue.strip() for queue in queues.split(",") if queue.strip()]
    settings = settings.model_copy(update={"data_dir": settings.data_dir.resolve()})
    if "gpu" in queue_list and slot is None:
        _run_gpu_worker(queue_list, concurrency, gpus if gpus is not None else settings.gpus)
        return
    if gpus is not None:
        _fail(f"--gpus {gpus}: only a worker of the gpu queue uses GPUs (--queues gpu or cpu,gpu)")
    _log_service_to_stderr(slot)
    from spaceport.jobs.celery_app import run_worker

    try:
        run_worker(settings, queue_list, concurrency, slot=slot)
    except SpaceportError as exc:
        _fail(str(exc))


def _run_gpu_worker(queues: list[str], concurrency: int, gpus: str) -> None:
    """The parent of the gpu worker's slot processes (spaceport.jobs.slot_workers); exits with its status."""
    from spaceport.gpus import gpu_slots
    from spaceport.jobs.slot_workers import run_slot_workers

    unknown = [queue for queue in queues if queue not in ("cpu", "gpu")]
    if unknown:
        _fail(f"--queues {','.join(queues)}: name cpu, gpu or both (cpu,gpu)")
    try:
        slots = gpu_slots(gpus)
    except SpaceportError as exc:
        _fail(str(exc))
    _log_service_to_stderr()
    status = run_slot_workers(slots, queues, concurrency)
    if status:
        raise typer.Exit(status)


# -- spaceport view / export ---------------------------------------------------------------------------------


@app.command()
def view(
    target: Path = typer.Argument(..., help="a workspace folder, or a .sog / .ply splat"),
    port: int = typer.Option(8080, help="port on 127.0.0.1 (0: any free port)"),
    no_browser: bool = typer.Option(False, "--no-browser", help="only print the URL, do not open a browser"),
) -> None:
    """Serve the splat viewer for TARGET on 127.0.0.1 and print its URL; Ctrl-C stops it."""
    from spaceport.viewer import serve_viewer

    def announce(url: str) -> None:
        console.print(f"viewer of {escape(str(target))} at [bold]{url}[/bold] (Ctrl-C stops it)", highlight=False)
        print(url, flush=True)  # alone on stdout, for scripts

    try:
        serve_viewer(target, port=port, open_browser=not no_browser, announce=announce)
    except SpaceportError as exc:
        _fail(str(exc))
    except OSError as exc:  # the port is taken, or not ours to bind
        _fail(f"cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); pass another --port (0: any free)")
    except KeyboardInterrupt:
        pass


def _export_html(target: Path, output: Path) -> Path:
    from spaceport.viewer import export_html

    return export_html(target, output)


# --format value -> writer(target, output) -> written path; other formats (sog, ply, spz, ...) plug in here
def _export_splat(fmt: str):
    def write(target: Path, output: Path) -> Path:
        from spaceport.compress.export import export_splat

        return export_splat(target, fmt, output, progress=RichProgress(console=console))

    return write


# sog, compressed-ply, spz, splat: the compress stage's pruning and SH band dropping first; ply: the splat as it is
EXPORT_FORMATS = {"html": _export_html, **{fmt: _export_splat(fmt) for fmt in
                                           ("sog", "ply", "compressed-ply", "spz", "splat")}}


@app.command()
def export(
    target: Path = typer.Argument(..., help="a workspace folder or a splat file (.ply, .compressed.ply, .sog, "
                                  ".spz, .splat; html: .sog or .ply)"),
    format: str = typer.Option(..., "--format", help=" | ".join(EXPORT_FORMATS)
                               + " (html: one self-contained page with the viewer and the splat)"),
    output: Path = typer.Option(..., "-o", "--output", help="file to write"),
) -> None:
    """Export a workspace's splat (or a splat file) to another format."""
    writer = EXPORT_FORMATS.get(format)
    if writer is None:
        _fail(f"--format {format}: choose one of {', '.join(EXPORT_FORMATS)}")
    try:
        written = writer(target, output)
    except SpaceportError as exc:
        _fail(str(exc))
    console.print(f"wrote {escape(str(written))} ({written.stat().st_size / 1e6:.1f} MB)", highlight=False)


# -- spaceport jobs: the client of the job service -----------------------------------------------------------

jobs_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Submit, follow and download jobs of a Spaceport server (`spaceport serve`).")
app.add_typer(jobs_app, name="jobs")



def _server_option() -> Any:
    return typer.Option("http://127.0.0.1:8000", "--server", envvar="SPACEPORT_SERVER",
                        help="URL of the job service")


def _key_option() -> Any:
    return typer.Option(None, "--key", envvar="SPACEPORT_API_KEY", show_default=False,
                        help="API key (from `spaceport keys create`)")


def _job_id_argument() -> Any:
    return typer.Argument(..., help="job id (as printed by submit; `spaceport jobs list`)")

# exit codes of `jobs watch` (and `jobs submit --watch`) by the job's final state
WATCH_EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 4}


class _JobService:
    """``with _JobService(server, key) as client``: an ApiClient whose errors (the server's 4xx messages, an
    unreachable server) end the command with a clear message and exit code 2."""

    def __init__(self, server: str, key: str | None):
        from spaceport.client import ApiClient

        self.client = ApiClient(server, key)

    def __enter__(self) -> Any:
        return self.client

    def __exit__(self, _type: Any, error: BaseException | None, _traceback: Any) -> None:
        self.client.close()
        if isinstance(error, SpaceportError):
            _fail(str(error), code=error.exit_code)


class _RichTransfer:
    """Byte progress of an upload or download as a rich bar (size, speed, time left)."""

    def __init__(self, bar: Any):
        self.bar = bar
        self.task: Any = None

    def start(self, label: str, total: int | None) -> None:
        self.task = self.bar.add_task(escape(label), total=total)

    def advance(self, n: int) -> None:
        self.bar.update(self.task, advance=n)


def _transfer_bar() -> Any:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _progress_text(message: str | None, metrics: Any, stage: str) -> str:
    """'train 150/300 loss=0.1995 gaussians=1691' from a progress event's message and metrics."""
    if isinstance(metrics, dict) and isinstance(metrics.get(stage), dict):
        metrics = metrics[stage]  # the stage's own figures, as its progress reports them
    parts = [message] if message else []
    if isinstance(metrics, dict):
        if isinstance(metrics.get("completed"), int | float) and isinstance(metrics.get("total"), int | float):
            parts.append(f"{metrics['completed']:g}/{metrics['total']:g}")
        figures = [(key, value) for key, value in metrics.items()
                   if key not in ("task", "completed", "total") and isinstance(value, int | float)]
        parts += [f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in figures[:4]]
    return " ".join(parts)


class _JobView:
    """A job's events as rich bars like `spaceport run` shows: one for the job, one per stage (fraction and
    message); log lines and state changes are printed above them."""

    def __init__(self, bar: Any):
        self.bar = bar
        self.job_task = bar.add_task("job", total=1.0, info="")
        self.stage_tasks: dict[str, Any] = {}
        self.state: str | None = None

    def _stage_task(self, stage: str) -> Any:
        if stage not in self.stage_tasks:
            self.stage_tasks[stage] = self.bar.add_task(escape(stage), total=1.0, info="")
        return self.stage_tasks[stage]

    def show(self, event: Any) -> None:
        data = event.data or {}
        if event.kind == "progress":
            self._show_progress(event, data)
        elif event.kind == "stage" and event.stage:
            self._show_stage(event, data)
        elif event.kind == "state":
            self._show_state(data.get("state", "?"), data.get("error"))
        elif event.message:
            self.bar.console.print(f"[dim]{escape(event.message)}[/dim]", highlight=False)

    def _show_state(self, state: str, error: str | None) -> None:
        if state == self.state and not error:
            return
        self.state = state
        style = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(state, "cyan")
        self.bar.console.print(f"[{style}]job {escape(state + (f': {error}' if error else ''))}[/{style}]",
                               highlight=False)
        if state in WATCH_EXIT_CODES:
            self.bar.update(self.job_task, info=state, **({"completed": 1.0} if state == "succeeded" else {}))

    def _show_progress(self, event: Any, data: dict[str, Any]) -> None:
        if event.stage:
            update: dict[str, Any] = {"info": escape(_progress_text(event.message, data.get("metrics"), event.stage))}
            if event.fraction is not None:
                update["completed"] = event.fraction
            self.bar.update(self._stage_task(event.stage), **update)
        if data.get("progress") is not None:
            eta = data.get("eta_s")
            self.bar.update(self.job_task, completed=data["progress"],
                            info=f"about {_duration(eta)} left" if eta is not None else "")

    def _show_stage(self, event: Any, data: dict[str, Any]) -> None:
        task, state = self._stage_task(event.stage), data.get("state")
        if state == "running":
            attempt = data.get("attempt") or 1
            self.bar.update(task, info="started" if attempt == 1 else f"attempt {attempt} (resumed)")
        elif state == "succeeded":
            seconds = data.get("seconds")
            info = f"done in {_duration(seconds)}" if seconds is not None else "done"
            self.bar.update(task, completed=1.0, info=info)
        else:
            self.bar.update(task, info=f"[red]{escape(event.message or str(state))}[/red]")


def _watch(client: Any, job_id: str) -> int:
    """Follow the job's events with bars until its final state; the exit code of that state."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    job = client.get_job(job_id)
    console.print(f"job [bold]{job.id}[/bold] (steps={job.steps}, preset={job.preset}) on {client.server}",
                  highlight=False)
    bar = Progress(TextColumn("[bold]{task.description:>9}"), BarColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[info]}"), console=console)

    said: list[str] = []

    def reconnecting(reason: str) -> None:
        if not said or said[-1] != reason:  # once per outage, not at every retry
            bar.console.print(f"[yellow]{escape(reason)}[/yellow]", highlight=False)
            said.append(reason)

    try:
        with bar:
            view = _JobView(bar)
            for event in client.follow_events(job.id, on_reconnect=reconnecting):
                view.show(event)
    except KeyboardInterrupt:
        console.print(f"stopped watching; job {job.id} goes on (`spaceport jobs watch {job.id}` follows it again)",
                      highlight=False, soft_wrap=True)
        return 130
    job = client.get_job(job.id)
    _print_outcome(job)
    return WATCH_EXIT_CODES.get(job.state, 1)


def _print_outcome(job: Any) -> None:
    if job.state == "succeeded":
        names = ", ".join(artifact.name for artifact in job.artifacts) or "none"
        console.print(f"[green]job {job.id} succeeded[/green]; artifacts: {names} "
                      f"(`spaceport jobs download {job.id}`)", highlight=False, soft_wrap=True)
    elif job.state == "failed":
        console.print(f"[red]job {job.id} failed[/red] in {job.stage or 'no stage'}: {escape(job.error or '?')}",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"[yellow]job {job.id} {job.state}[/yellow]", highlight=False)


def _input_url(value: str) -> str | None:
    """INPUT as an input_url when it is a URL; None for a local path."""
    scheme, sep, _ = value.partition("://")
    if not sep:
        return None
    if scheme.lower() not in ("s3", "file"):
        _fail(f"INPUT {value}: only s3:// and file:// URLs are read by the server; download the data and give "
              "the local folder or file instead")
    return value


@jobs_app.command("submit")
def jobs_submit(
    input: str = typer.Argument(..., help="a folder of photos, a .zip, a video, a .ply (steps compress), a folder "
                                          "with images/ and sparse/0/ (steps train), or an s3:// or file:// URL "
                                          "the server reads"),
    steps: str | None = typer.Option(None, help="full | sfm | train | compress; default: compress for a .ply, train "
                                                "for a folder with images/ + sparse/, full otherwise"),
    preset: str = typer.Option(
        "standard", help="preview (CPU-sized) | standard (GPU, ~2 min) | quality (GPU, longer, coarse to fine)"),
    set_: list[str] = typer.Option([], "--set", help="any setting as STAGE.FIELD=VALUE (see spaceport config); "
                                                     "repeatable"),
    email: str | None = typer.Option(None, "--email", help="e-mail this address when the job ends"),
    webhook: str | None = typer.Option(None, "--webhook", help="POST a signed JSON body to this URL when the job "
                                                               "ends"),
    watch: bool = typer.Option(False, "--watch", help="then follow the job as `spaceport jobs watch` does"),
    server: str = _server_option(),
    key: str | None = _key_option(),
) -> None:
    """Submit a job: upload INPUT with a progress bar, or pass its URL.

    The job id is printed alone on the last line of stdout."""
    from spaceport.client import job_spec, plan_upload

    url = _input_url(input)
    settings = _settings(set_, {})
    try:
        plan = None if url else plan_upload(Path(input))
        notify = {"email": email, "webhook_url": webhook} if email or webhook else None
        spec = job_spec(input_url=url, steps=steps or (plan.steps if plan else "full"), preset=preset,
                        settings=settings, notify=notify)
    except SpaceportError as exc:
        _fail(str(exc))
    _resolve(spec.preset, spec.settings)  # a mistyped setting fails now, before anything is uploaded
    with _JobService(server, key) as client:
        if plan is None:
            job = client.submit_url(spec)
        else:
            if plan.skipped:
                console.print(f"[yellow]not uploaded (not photos): {escape(', '.join(plan.skipped[:5]))}"
                              f"{' ...' if len(plan.skipped) > 5 else ''}[/yellow]", highlight=False)
            with _transfer_bar() as bar:
                job = client.submit_files(plan.files, spec, _RichTransfer(bar))
        console.print(f"job [bold]{job.id}[/bold] {job.state} (steps={job.steps}, preset={job.preset}); follow it "
                      f"with `spaceport jobs watch {job.id}`", highlight=False, soft_wrap=True)
        print(job.id, flush=True)
        if watch:
            code = _watch(client, job.id)
            if code:
                raise typer.Exit(code)


@jobs_app.command("list")
def jobs_list(
    state: str | None = typer.Option(None, help="only jobs in this state: queued | running | succeeded | failed | "
                                                "cancelled"),
    limit: int = typer.Option(20, min=1, max=200, help="at most this many jobs, newest first"),
    cursor: str | None = typer.Option(None, help="next_cursor of an earlier --json page: the jobs older than it"),
    as_json: bool = typer.Option(False, "--json", help="print the page as JSON (with next_cursor)"),
    server: str = _server_option(),
    key: str | None = _key_option(),
) -> None:
    """Your jobs, newest first."""
    with _JobService(server, key) as client:
        page = client.list_jobs(limit=limit, cursor=cursor, state=state)
    if as_json:
        print(page.model_dump_json(indent=2))
        return
    if not page.jobs:
        console.print("no jobs" + (f" in state {state}" if state else ""))
        return
    table = Table(box=None)
    for column in ("id", "state", "stage", "progress", "steps", "preset", "created"):
        table.add_column(column, no_wrap=True)
    errors = any(job.error for job in page.jobs)
    if errors:
        table.add_column("error", min_width=24, overflow="fold")
    for job in page.jobs:
        row = [job.id, job.state, job.stage or "", f"{job.progress:.0%}", job.steps, job.preset,
               job.created_at.astimezone().strftime("%Y-%m-%d %H:%M")]
        table.add_row(*row, *([escape(job.error or "")] if errors else []))
    Console().print(table)
    if page.next_cursor:
        console.print(f"older jobs: --cursor {page.next_cursor}", highlight=False)


@jobs_app.command("show")
def jobs_show(job_id: str = _job_id_argument(), server: str = _server_option(),
               key: str | None = _key_option()) -> None:
    """Print the job (state, progress, metrics, config, artifacts) as JSON."""
    with _JobService(server, key) as client:
        print(client.get_job(job_id).model_dump_json(indent=2))


@jobs_app.command("watch")
def jobs_watch(job_id: str = _job_id_argument(), server: str = _server_option(),
               key: str | None = _key_option()) -> None:
    """Follow a job live (a bar per stage) until it ends; exit 0 succeeded, 1 failed, 4 cancelled."""
    with _JobService(server, key) as client:
        code = _watch(client, job_id)
    if code:
        raise typer.Exit(code)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str = _job_id_argument(), server: str = _server_option(),
               key: str | None = _key_option()) -> None:
    """Cancel a job: a running stage stops, finished stages are kept. Prints the job's state."""
    with _JobService(server, key) as client:
        job = client.cancel(job_id)
    if job.state == "cancelled":
        console.print(f"job {job.id} cancelled", highlight=False)
    else:
        console.print(f"cancel requested: job {job.id} stops its {job.stage or 'current'} stage within seconds "
                      f"(`spaceport jobs watch {job.id}` shows when)", highlight=False)
    print(job.state)


@jobs_app.command("download")
def jobs_download(
    job_id: str = _job_id_argument(),
    name: str | None = typer.Argument(None, help="scene.sog | splat.ply | sparse.zip | report.json | report.html | "
                                                 "logs.zip | scene.spz | scene.splat | scene.compressed.ply (made "
                                                 "on first download); every one the job has when left out"),
    output: Path | None = typer.Option(None, "-o", "--output", help="folder to write into (default: ./JOB_ID)"),
    server: str = _server_option(),
    key: str | None = _key_option(),
) -> None:
    """Download a job's results; prints each written path."""
    folder = output if output is not None else Path(job_id)
    with _JobService(server, key) as client:
        if name is None:
            job = client.get_job(job_id)
            names = [artifact.name for artifact in job.artifacts]
            if not names:
                _fail(f"job {job.id} has no results yet (it is {job.state}): wait for it with "
                      f"`spaceport jobs watch {job.id}`")
        else:
            names = [name]
        for artifact in names:
            with _transfer_bar() as bar:
                written = client.download(job_id, artifact, folder, _RichTransfer(bar))
            print(written, flush=True)
