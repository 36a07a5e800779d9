"""`spaceport serve` and `spaceport worker` as real processes for the executor tests, and a small API client.

Every process is started in its own session and stopped with its whole group (even when a test fails), so the
stage processes and forkservers it started end with it. Their output goes to a log file that a failing assertion
can show.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

# the small settings the tests use (tests/conftest.py PREVIEW_ARGS), with checkpoints often enough to resume from
PREVIEW_SETTINGS = {"ingest.max_size": 480, "sfm.max_image_size": 480, "train.steps": 300,
                    "train.checkpoint_every": 50}
JOB_DEADLINE_S = 900.0


def service_env(**spaceport: str | int | float) -> dict[str, str]:
    """This environment without any SPACEPORT_* variable, plus ``spaceport`` as SPACEPORT_<NAME>."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SPACEPORT_")}
    env.update({f"SPACEPORT_{name.upper()}": str(value) for name, value in spaceport.items()})
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


@dataclass
class ServiceProcess:
    """One `spaceport ...` process (own session), its output in ``log``."""

    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    url: str | None = None
    stdout_lines: list[str] = field(default_factory=list)

    def start(self, wait_for_url: bool = False, timeout_s: float = 120.0) -> ServiceProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "spaceport", *self.args], env=self.env,
                                            stdout=subprocess.PIPE if wait_for_url else log, stderr=log,
                                            start_new_session=True)
        if wait_for_url:
            self.url = self._read_url(timeout_s)
            wait_until(lambda: _answers(self.url + "/healthz"), timeout_s, what=f"{self.url}/healthz", log=self)
        return self

    def _read_url(self, timeout_s: float) -> str:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout_s
        os.set_blocking(self.process.stdout.fileno(), False)
        buffer = b""
        while time.monotonic() < deadline:
            chunk = self.process.stdout.read()
            if chunk:
                buffer += chunk
                for line in buffer.decode().splitlines():
                    if line.startswith("http://"):
                        return line.strip()
            if self.process.poll() is not None:
                raise AssertionError(f"{self.args[0]} ended with {self.process.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"{self.args[0]} printed no URL in {timeout_s} s:\n{self.tail()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self, with_descendants: bool = False) -> None:
        """SIGKILL the process (a crash), or it and every process it started, stage processes in sessions of their
        own included, all at once (the machine is gone: nothing gets to checkpoint)."""
        assert self.process is not None
        for pid in [*descendants(self.pid), self.pid] if with_descendants else [self.pid]:  # one sweep, all at once
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL the whole group; idempotent."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _killpg(self.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        _killpg(self.pid, signal.SIGKILL)  # whatever of its group is left (forkserver, resource tracker)
        if self.process.poll() is None:
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def descendants(pid: int) -> dict[int, int]:
    """Every process below ``pid`` (children, their children, ...) with its parent, read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        parents[int(stat.parent.name)] = int(fields[1])
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found.update((child, parents[child]) for child in children)
        frontier = children
    return found


def stage_processes(pid: int) -> list[int]:
    """The stage processes of a serve or worker process: the children of its forkserver."""
    return [child for child, parent in descendants(pid).items() if parent != pid]


def _killpg(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(condition: Callable[[], Any], timeout_s: float, *, what: str, interval_s: float = 0.5,
               log: ServiceProcess | None = None) -> Any:
    """Poll ``condition()`` until it returns something truthy (returned); fail naming ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}" +
                                 (f"\n--- {log.args[0]} log ---\n{log.tail()}" if log else ""))
        time.sleep(interval_s)


@contextmanager
def running(*processes: ServiceProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.stop()


class Api:
    """The job API of a running service, with one owner's key."""

    def __init__(self, url: str, key: str) -> None:
        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def close(self) -> None:
        self.client.close()

    def submit(self, job: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post("/v1/jobs", json=job)
        assert response.status_code == 201, response.text
        return response.json()

    def upload(self, files: list[tuple[str, bytes]], job: dict[str, Any]) -> dict[str, Any]:
        parts: list[tuple[str, Any]] = [("job", (None, json.dumps(job).encode(), "application/json"))]
        parts += [("files", (name, data, "application/octet-stream")) for name, data in files]
        response = self.client.post("/v1/jobs", files=parts)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def events(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        """The job's events after event ``after`` (the SSE stream, read to its end: call once the job is final;
        the stream ends at the final state event, and resuming after it gives the notifications sent then)."""
        response = self.client.get(f"/v1/jobs/{job_id}/events", params={"after": after})
        return [json.loads(line[len("data: "):]) for line in response.text.splitlines() if line.startswith("data: ")]

    def artifact(self, job_id: str, name: str) -> bytes:
        response = self.client.get(f"/v1/jobs/{job_id}/artifacts/{name}")
        assert response.status_code == 200, response.text
        return response.content

    def wait_for(self, job_id: str, condition: Callable[[dict[str, Any]], bool], what: str,
                 timeout_s: float = JOB_DEADLINE_S, log: ServiceProcess | None = None) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["state"] in ("failed", "cancelled") and not condition(job):
                raise AssertionError(f"job {job_id} ended {job['state']}: {job['error']}"
                                     + (f"\n--- log ---\n{log.tail()}" if log else ""))
            return job if condition(job) else None

        return wait_until(check, timeout_s, what=f"job {job_id}: {what}", log=log)

    def wait_final(self, job_id: str, timeout_s: float = JOB_DEADLINE_S,
                   log: ServiceProcess | None = None) -> dict[str, Any]:
        return wait_until(lambda: (job := self.job(job_id))["state"] in ("succeeded", "failed", "cancelled") and job,
                          timeout_s, what=f"job {job_id} to end", log=log)


def train_step(job: dict[str, Any]) -> float:
    """The training step a running job reports (its live train metrics), 0 before training."""
    return float((job.get("metrics") or {}).get("train", {}).get("completed") or 0)
