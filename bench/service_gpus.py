"""Two trainings at once on one multi-GPU worker (issue 15): wall times, the GPU each job trained on, and a worker
killed mid-training whose trainings resume.

    python bench/service_gpus.py                          # the GPU host: monstree, preset standard, --gpus all
    python bench/service_gpus.py --executor embedded      # no Redis there: `spaceport serve`'s embedded worker
    python bench/service_gpus.py ../shared/data/monstree/images --preset preview --set train.steps=50 \
        --set ingest.max_size=480 --set sfm.max_image_size=480 --set train.checkpoint_every=20 \
        --kill-after-step 25                              # a quick try on a CPU machine

Starts on 127.0.0.1, in a temporary data folder (SQLite store, local workspaces): with ``--executor celery`` (the
default) a Redis (``redis-server`` on a free port, unless ``--broker-url``), the API (``spaceport serve``), a
``spaceport worker --queues cpu --concurrency 2`` and a ``spaceport worker --queues gpu --gpus GPUS``; with
``--executor embedded``, ``spaceport serve --gpus GPUS --cpu-slots 2`` alone. Jobs read PHOTOS through a
``file://`` URL (an import root), so no upload time is counted. Phases:

1. ``alone``: one job; its wall time (submitted -> succeeded).
2. ``together``: two jobs submitted at once; the wall time until both succeeded; the GPU each trained on (the
   device its train stage run recorded).
3. ``resume`` (unless ``--no-resume``): two jobs at once; once both trained past ``--kill-after-step`` with a
   checkpoint on disk, the gpu worker (or serve) is killed with SIGKILL, slots and stage processes included, and
   started again; both must succeed, their training resumed from a checkpoint, on whichever GPUs were free.

Prints a table and writes bench/results/service_gpus.json (or ``--out``; also $OUT/ when set, as on the lent GPU
machine). The goal of issue 15: phase 2 takes <= 1.2x phase 1, each job on its own GPU. Exits 1 when a job
failed. On a machine without a GPU both trainings share the CPU: expect about 2x there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = next((p for p in (ROOT / ".data_monstree", ROOT.parent / "shared" / "data" / "monstree" / "images")
                       if p.is_dir()), ROOT / ".data_monstree")
FINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Proc:
    """A child process in a session of its own (stopped with its whole group), its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.args, self.env, self.log = name, args, env, logs / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=log, cwd=ROOT,
                                            start_new_session=True)
        return self

    def kill_all(self) -> None:
        """SIGKILL, all at once, to the process and every process below it (slots, forkservers, and the stage
        processes, which lead sessions of their own): the machine is gone, nothing gets to checkpoint."""
        if self.process is not None:
            for pid in [*descendants(self.process.pid), self.process.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            _killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                pass
        _killpg(self.process.pid, signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _killpg(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def spaceport(*args: str) -> list[str]:
    return [sys.executable, "-m", "spaceport", *args]


class Service:
    """The API and the workers of one executor, with one owner's key."""

    def __init__(self, args: argparse.Namespace, data: Path) -> None:
        self.args, self.data, self.logs = args, data, data / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.redis: Proc | None = None
        self.serve: Proc | None = None
        self.gpu: Proc | None = None
        self.cpu: Proc | None = None
        self.url = ""
        self.port = free_port()
        env = {name: value for name, value in os.environ.items() if not name.startswith("SPACEPORT_")}
        env.update({"SPACEPORT_DATA_DIR": str(data), "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE"),
                    "SPACEPORT_IMPORT_ROOTS": json.dumps([str(args.photos.resolve())]),
                    "SPACEPORT_MAX_RUNNING_JOBS_PER_OWNER": "100", "SPACEPORT_GPUS": args.gpus})
        self.env = env
        self.key = self._make_key()

    def _make_key(self) -> str:
        from spaceport.jobs.store import open_store

        store = open_store(f"sqlite:///{self.data / 'spaceport.db'}")
        key = store.create_api_key(store.ensure_owner("bench").id)
        store.close()
        return key

    def start(self) -> None:
        if self.args.executor == "celery":
            broker = self.args.broker_url or self._start_redis()
            self.env["SPACEPORT_BROKER_URL"] = broker
            self.cpu = Proc("cpu-worker", spaceport("worker", "--queues", "cpu", "--concurrency",
                                                    str(self.args.cpu_concurrency)), self.env, self.logs).start()
            self.start_gpu_worker()
        self.start_serve()

    def _start_redis(self) -> str:
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("redis-server is not installed: pass --broker-url redis://HOST:PORT/0, or use "
                             "--executor embedded (the embedded worker of spaceport serve needs no broker)")
        port = free_port()
        self.redis = Proc("redis", [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(self.data)], self.env, self.logs).start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return f"redis://127.0.0.1:{port}/0"
            time.sleep(0.1)
        raise SystemExit(f"redis-server did not listen on {port}:\n{self.redis.tail()}")

    def start_gpu_worker(self) -> None:
        self.gpu = Proc("gpu-worker", spaceport("worker", "--queues", "gpu", "--gpus", self.args.gpus), self.env,
                        self.logs).start()

    def start_serve(self) -> None:
        args = ["serve", "--port", str(self.port), "--data", str(self.data)]
        if self.args.executor == "embedded":
            args += ["--gpus", self.args.gpus, "--cpu-slots", str(self.args.cpu_concurrency)]
        self.serve = Proc("serve", spaceport(*args), self.env, self.logs).start()
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.serve.process is not None and self.serve.process.poll() is not None:
                raise SystemExit(f"spaceport serve exited:\n{self.serve.tail()}")
            time.sleep(0.3)
        raise SystemExit(f"spaceport serve did not answer within 120 s:\n{self.serve.tail()}")

    def kill_and_restart_gpu_side(self) -> None:
        """The worker that trains, killed with everything it runs, then started again."""
        if self.args.executor == "celery":
            assert self.gpu is not None
            self.gpu.kill_all()
            self.start_gpu_worker()
        else:
            assert self.serve is not None
            self.serve.kill_all()
            self.start_serve()

    def stop(self) -> None:
        for proc in (self.gpu, self.cpu, self.serve, self.redis):
            if proc is not None:
                proc.stop()

    # -- the API ------------------------------------------------------------------------------------------------

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=60)

    def submit(self, count: int) -> list[str]:
        body = {"input_url": self.args.photos.resolve().as_uri(), "steps": "full", "preset": self.args.preset,
                "settings": self.args.settings}
        with self.client() as client:
            responses = [client.post("/v1/jobs", json=body) for _ in range(count)]
        for response in responses:
            if response.status_code != 201:
                raise SystemExit(f"submit failed: {response.status_code} {response.text}")
        return [response.json()["id"] for response in responses]

    def jobs(self, job_ids: list[str]) -> list[dict[str, Any]]:
        for _ in range(60):  # the API restarting (embedded executor, resume phase): ask again
            try:
                with self.client() as client:
                    return [client.get(f"/v1/jobs/{job_id}").raise_for_status().json() for job_id in job_ids]
            except httpx.HTTPError:
                time.sleep(1)
        raise SystemExit(f"the API at {self.url} stopped answering")

    def wait(self, job_ids: list[str], condition: Any, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            jobs = self.jobs(job_ids)
            if condition(jobs):
                return jobs
            if any(job["state"] in ("failed", "cancelled") for job in jobs):
                return jobs  # the caller reports them
            if all(job["state"] in FINAL for job in jobs):
                raise SystemExit(f"the jobs ended before {what}: {[job['id'] for job in jobs]}")
            time.sleep(0.5)
        raise SystemExit(f"timed out after {self.args.timeout} s waiting for {what}\n" + "\n".join(
            f"--- {proc.name} ---\n{proc.tail()}" for proc in (self.serve, self.gpu) if proc is not None))

    def train_runs(self, job_id: str) -> list[dict[str, Any]]:
        from spaceport.jobs.store import open_store

        store = open_store(f"sqlite:///{self.data / 'spaceport.db'}")
        try:
            return [{"attempt": run.attempt, "state": run.state, "device": run.device, "worker": run.worker,
                     "seconds": round(run.seconds, 2) if run.seconds is not None else None,
                     "started_at": run.started_at.isoformat(), "ended_at": run.ended_at and run.ended_at.isoformat()}
                    for run in store.stage_runs(job_id) if run.stage == "train"]
        finally:
            store.close()


def train_step(job: dict[str, Any]) -> float:
    return float((job.get("metrics") or {}).get("train", {}).get("completed") or 0)


def has_checkpoint(service: Service, job_id: str) -> bool:
    return any((service.data / "workspaces" / job_id / "train" / "ckpt").glob("step_*.pt"))


def job_summary(service: Service, job: dict[str, Any], submitted: float, finished: float) -> dict[str, Any]:
    train = (job.get("metrics") or {}).get("train", {})
    return {"id": job["id"], "state": job["state"], "error": job["error"], "wall_s": round(finished - submitted, 1),
            "device": train.get("device"), "train_seconds": train.get("train_seconds"),
            "resumed_from_step": train.get("resumed_from_step"), "psnr": train.get("psnr"),
            "train_runs": service.train_runs(job["id"])}


def run_jobs(service: Service, count: int) -> dict[str, Any]:
    """Submit ``count`` jobs at once and wait for all; each job's wall time ends when it is seen final."""
    submitted = time.monotonic()
    ids = service.submit(count)
    jobs, finished = wait_until_final(service, ids, f"{count} job(s) to end")
    summaries = [job_summary(service, job, submitted, finished.get(job["id"], time.monotonic())) for job in jobs]
    return {"wall_s": round(max(s["wall_s"] for s in summaries), 1), "jobs": summaries}


def wait_until_final(service: Service, ids: list[str], what: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The jobs once all are final, and when each was first seen final (monotonic seconds)."""
    finished: dict[str, float] = {}

    def all_final(jobs: list[dict[str, Any]]) -> bool:
        for job in jobs:
            if job["state"] in FINAL:
                finished.setdefault(job["id"], time.monotonic())
        return len(finished) == len(jobs)

    jobs = service.wait(ids, all_final, what)
    all_final(jobs)
    return jobs, finished


def run_resume(service: Service) -> dict[str, Any]:
    kill_at = service.args.kill_after_step
    submitted = time.monotonic()
    ids = service.submit(2)
    running = service.wait(ids, lambda jobs: all(job["stage"] == "train" and train_step(job) >= kill_at
                                                 and has_checkpoint(service, job["id"]) for job in jobs),
                           f"both trainings past step {kill_at} with a checkpoint (lower --kill-after-step, or "
                           "raise train.steps)")
    steps_at_kill = [train_step(job) for job in running]
    service.kill_and_restart_gpu_side()
    killed = time.monotonic()
    jobs, finished = wait_until_final(service, ids, "the resumed jobs to end")
    summaries = [job_summary(service, job, submitted, finished.get(job["id"], time.monotonic())) for job in jobs]
    return {"killed_at_steps": steps_at_kill, "kill_to_end_s": round(max(finished.values(), default=killed) - killed,
                                                                     1), "jobs": summaries}


def gpu_of(device: str | None) -> str | None:
    """The physical GPU in a device label ("cuda:0 (NVIDIA H200, physical GPU 1)" -> "1"); the label otherwise."""
    if device and "physical GPU " in device:
        return device.rsplit("physical GPU ", 1)[1].rstrip(")")
    return device


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    alone, together = results["alone"], results["together"]
    devices = [job["device"] for job in together["jobs"]]
    out = {"all_succeeded": all(job["state"] == "succeeded" for phase in ("alone", "together", "resume")
                                for job in results.get(phase, {}).get("jobs", [])),
           "together_over_alone": round(together["wall_s"] / alone["wall_s"], 3),
           "own_gpu_each": len({gpu_of(d) for d in devices}) == len(devices) and all(
               d and d.startswith("cuda") for d in devices)}
    out["goal_met"] = out["all_succeeded"] and out["own_gpu_each"] and out["together_over_alone"] <= 1.2
    if "resume" in results:
        out["resumed_from_checkpoints"] = all((job["resumed_from_step"] or 0) > 0
                                              for job in results["resume"]["jobs"])
        out["goal_met"] = out["goal_met"] and out["resumed_from_checkpoints"]
    return out


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{'phase':<9} {'job':<13} {'state':<10} {'wall s':>7} {'train s':>8} {'resumed':>8}  device of train")
    for phase in ("alone", "together", "resume"):
        for job in results.get(phase, {}).get("jobs", []):
            devices = " -> ".join(f"{run['device']} ({run['state']})" for run in job["train_runs"]) or "-"
            print(f"{phase:<9} {job['id']:<13} {job['state']:<10} {job['wall_s']:>7} "
                  f"{job['train_seconds'] if job['train_seconds'] is not None else '-':>8} "
                  f"{job['resumed_from_step'] if job['resumed_from_step'] is not None else '-':>8}  {devices}")
    check = results["verdict"]
    print(f"together: both in {results['together']['wall_s']} s, {check['together_over_alone']}x one alone "
          f"({results['alone']['wall_s']} s; goal <= 1.2x); each on its own GPU: {check['own_gpu_each']}")
    if "resume" in results:
        resume = results["resume"]
        print(f"resume: killed at train steps {resume['killed_at_steps']}, both ended {resume['kill_to_end_s']} s "
              f"later; resumed from checkpoints: {check['resumed_from_checkpoints']}")
    print(f"goal of issue 15 met: {check['goal_met']}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", nargs="?", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--set", dest="set_", action="append", default=[], help="STAGE.FIELD=VALUE; repeatable")
    parser.add_argument("--executor", choices=("celery", "embedded"), default="celery")
    parser.add_argument("--gpus", default="all", help="the worker's --gpus: all | none | 0,1")
    parser.add_argument("--broker-url", default=None, help="an existing Redis; default: redis-server started here")
    parser.add_argument("--cpu-concurrency", type=int, default=2, help="cpu stages at once (both jobs' SfM)")
    parser.add_argument("--kill-after-step", type=int, default=1500, help="resume phase: kill once both trained "
                        "past this step (and a checkpoint exists: train.checkpoint_every)")
    parser.add_argument("--no-resume", action="store_true", help="skip the resume phase")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds a phase may take")
    parser.add_argument("--keep", action="store_true", help="keep the data folder (workspaces, logs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "service_gpus.json")
    args = parser.parse_args()
    args.settings = {}
    for item in args.set_:
        key, sep, raw = item.partition("=")
        if not sep:
            parser.error(f"--set {item}: expected STAGE.FIELD=VALUE")
        try:
            args.settings[key] = json.loads(raw)
        except json.JSONDecodeError:
            args.settings[key] = raw
    if not args.photos.is_dir():
        parser.error(f"{args.photos}: no such folder of photos")
    return args


def main() -> None:
    args = parse_args()
    data = Path(tempfile.mkdtemp(prefix="spaceport-gpus-"))
    service = Service(args, data)
    results: dict[str, Any] = {}
    try:
        service.start()
        results["alone"] = run_jobs(service, 1)
        results["together"] = run_jobs(service, 2)
        if not args.no_resume:
            results["resume"] = run_resume(service)
    finally:
        service.stop()
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
        else:
            print(f"data folder kept: {data}")
    from spaceport.gpus import visible_gpus

    results["verdict"] = verdict(results)
    results["setup"] = {"executor": args.executor, "gpus": args.gpus, "visible": visible_gpus().describe(),
                        "photos": str(args.photos), "preset": args.preset, "settings": args.settings,
                        "cpu_concurrency": args.cpu_concurrency, "date": time.strftime("%Y-%m-%d %H:%M"),
                        "machine": f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    print_table(results)
    outs = [args.out] + ([Path(os.environ["OUT"]) / args.out.name] if os.environ.get("OUT") else [])
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    if not results["verdict"]["all_succeeded"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
