"""Workers with one slot per GPU (issue 15), on this machine without a GPU: `--gpus` parsing, the Celery gpu worker
(real Redis on 127.0.0.1:6379, real `spaceport serve` and `spaceport worker` processes) and the embedded worker of
`spaceport serve`.

The machine has no GPU, so the GPU list comes from CUDA_VISIBLE_DEVICES=0,1 in the worker's environment, which is
what discovery reads first (spaceport.gpus): the worker makes two slots, each process pinned with its own
CUDA_VISIBLE_DEVICES (read back from /proc/<pid>/environ and from the stage logs). CUDA itself is not faked: torch
finds none, so every training runs on the CPU and records device "cpu". Jobs are steps=train on the session's
COLMAP model with a few training steps.
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from spaceport.cli import app
from spaceport.gpus import gpu_slots, visible_gpus
from spaceport.jobs.store import Store, open_store
from tests.processes import PREVIEW_SETTINGS, Api, ServiceProcess, descendants, service_env, train_step, wait_until

REDIS_URL = "redis://127.0.0.1:6379/10"  # a database of its own (tests/databases.py: redis_url)
TWO_GPUS = {"CUDA_VISIBLE_DEVICES": "0,1"}
TRAIN_STEPS = 80


# -- --gpus -----------------------------------------------------------------------------------------------------


def test_gpus_select_slots_pinned_to_the_visible_gpus() -> None:
    two = visible_gpus(TWO_GPUS)
    assert [(gpu.index, gpu.cuda_id) for gpu in two.gpus] == [(0, "0"), (1, "1")]
    assert [(slot.name, slot.env) for slot in gpu_slots("all", two)] == [
        ("gpu0", {"CUDA_VISIBLE_DEVICES": "0"}), ("gpu1", {"CUDA_VISIBLE_DEVICES": "1"})]
    assert [(slot.name, slot.env) for slot in gpu_slots(" 1 ", two)] == [("gpu1", {"CUDA_VISIBLE_DEVICES": "1"})]
    # indices are positions among the visible GPUs (torch's cuda:N), pinned to the physical one
    assert [slot.env for slot in gpu_slots("1", visible_gpus({"CUDA_VISIBLE_DEVICES": "3,2"}))] == [
        {"CUDA_VISIBLE_DEVICES": "2"}]
    # none: one slot training on the CPU, the GPUs hidden from it
    assert [(slot.name, slot.env, slot.gpu) for slot in gpu_slots("none", two)] == [
        ("cpu0", {"CUDA_VISIBLE_DEVICES": ""}, None)]
    # no GPU visible (an empty mask, or a negative index ending it, as CUDA reads it): all is one CPU slot
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}).gpus == []
    assert [gpu.cuda_id for gpu in visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,0"}).gpus] == ["1"]
    assert [(slot.name, slot.env) for slot in gpu_slots("all", visible_gpus({"CUDA_VISIBLE_DEVICES": ""}))] == [
        ("cpu0", {})]


@pytest.mark.parametrize(("spec", "message"), [
    ("2", "--gpus 2: no GPU 2 here; visible GPUs: 0, 1 (from CUDA_VISIBLE_DEVICES=0,1)"),
    ("0,5,7", "no GPU 5, 7 here; visible GPUs: 0, 1"),
    ("0,0", "a GPU is named twice"),
    ("first", "give all, none, or GPU indices such as 0,1; visible GPUs: 0, 1"),
    ("", "give all, none, or GPU indices"),
])
def test_gpus_that_are_not_there_are_named_with_the_visible_ones(spec: str, message: str) -> None:
    from spaceport.errors import SpaceportError

    with pytest.raises(SpaceportError, match="^.*" + message.replace("(", r"\(").replace(")", r"\)")):
        gpu_slots(spec, visible_gpus(TWO_GPUS))


def invoke(args: list[str], **env: str) -> Any:
    return CliRunner().invoke(app, args, env={"SPACEPORT_BROKER_URL": "redis://127.0.0.1:1/0", **env})


def test_worker_and_serve_exit_2_naming_the_visible_gpus() -> None:
    result = invoke(["worker", "--queues", "gpu", "--gpus", "0,2"], CUDA_VISIBLE_DEVICES="0,1")
    assert result.exit_code == 2 and "--gpus 0,2: no GPU 2 here; visible GPUs: 0, 1" in result.output
    result = invoke(["worker", "--queues", "gpu", "--gpus", "0"], CUDA_VISIBLE_DEVICES="")
    assert result.exit_code == 2 and "no GPU 0 here; no GPU is visible" in result.output
    result = invoke(["worker", "--queues", "cpu", "--gpus", "0"], CUDA_VISIBLE_DEVICES="0,1")
    assert result.exit_code == 2 and "only a worker of the gpu queue uses GPUs" in result.output
    result = invoke(["worker", "--queues", "gpu"], SPACEPORT_GPUS="4", CUDA_VISIBLE_DEVICES="0,1")
    assert result.exit_code == 2 and "no GPU 4 here" in result.output
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--gpus", "3"], env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert result.exit_code == 2 and "--gpus 3: no GPU 3 here; visible GPUs: 0, 1" in result.output


# -- real services ----------------------------------------------------------------------------------------------


def model_files(workspace: Path) -> list[tuple[str, bytes]]:
    """A COLMAP model and its photos as a steps=train upload (images/..., sparse/0/...)."""
    files = [(f"images/{photo.name}", photo.read_bytes()) for photo in sorted((workspace / "images").glob("*.jpg"))]
    files += [(f"sparse/0/{part.name}", part.read_bytes())
              for part in sorted((workspace / "sfm" / "sparse" / "0").glob("*.bin"))]
    return files


def train_job() -> dict[str, Any]:
    return {"steps": "train", "preset": "preview", "settings": {**PREVIEW_SETTINGS, "train.steps": TRAIN_STEPS}}


@dataclass
class Service:
    data: Path
    env: dict[str, str]
    store: Store
    api: Api
    files: list[tuple[str, bytes]]

    def workspace(self, job_id: str) -> Path:
        return self.data / "workspaces" / job_id

    def train_runs(self, job_id: str) -> list[Any]:
        return [run for run in self.store.stage_runs(job_id) if run.stage == "train"]

    def wait_final_succeeded(self, job_id: str, log: ServiceProcess) -> dict[str, Any]:
        final = self.api.wait_final(job_id, timeout_s=600, log=log)
        assert final["state"] == "succeeded", f"{final['error']}\n{log.tail()}"
        return final


def start_api(tmp_path: Path, monstree_ws: Path, extra_env: dict[str, str], args: list[str]) -> tuple[
        Service, ServiceProcess]:
    data = tmp_path / "data"
    store = open_store(f"sqlite:///{data / 'spaceport.db'}")
    key = store.create_api_key(store.ensure_owner("teams").id)
    env = {**service_env(heartbeat_s=1, stale_after_s=15, data_dir=data), **extra_env}
    serve = ServiceProcess(["serve", "--port", "0", "--data", str(data), *args], env, tmp_path / "serve.log")
    serve.start(wait_for_url=True)
    return Service(data, env, store, Api(serve.url or "", key), model_files(monstree_ws)), serve


def slot_processes(worker: ServiceProcess) -> dict[int, dict[str, str]]:
    """The slot processes of a gpu worker (its children) with their environments, read from /proc."""
    slots = {}
    for pid, parent in descendants(worker.pid).items():
        if parent == worker.pid:
            try:
                raw = Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                continue
            slots[pid] = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    return slots


def run_pid(run: Any) -> int:
    return int(run.worker.rsplit(":", 2)[1])  # worker ids are kind@host:pid:token


def both_training(service: Service, job_ids: list[str]) -> bool:
    jobs = [service.api.job(job_id) for job_id in job_ids]
    assert all(job["state"] in ("queued", "running") for job in jobs), [(j["state"], j["error"]) for j in jobs]
    return all(job["stage"] == "train" and 0 < train_step(job) < TRAIN_STEPS for job in jobs)


def assert_ran_together(service: Service, job_ids: list[str]) -> list[Any]:
    """The jobs' trainings (one run each) overlapped in time; returns the runs."""
    runs = [service.train_runs(job_id) for job_id in job_ids]
    assert [len(job_runs) for job_runs in runs] == [1, 1], runs
    first, second = runs[0][0], runs[1][0]
    ends: list[datetime] = [first.ended_at, second.ended_at]
    assert first.started_at < ends[1] and second.started_at < ends[0], "the trainings did not overlap"
    return [first, second]


def test_celery_gpu_worker_without_cuda_trains_on_the_cpu_and_records_it(
        tmp_path: Path, redis_url: str, sfm_workspace: Path) -> None:
    service, serve = start_api(tmp_path, sfm_workspace, {"SPACEPORT_BROKER_URL": redis_url}, [])
    cpu = ServiceProcess(["worker", "--queues", "cpu"], service.env, tmp_path / "cpu.log")
    gpu = ServiceProcess(["worker", "--queues", "gpu"], service.env, tmp_path / "gpu.log")
    try:
        cpu.start()
        gpu.start()
        slots = wait_until(lambda: slot_processes(gpu), 30, what="the gpu worker's slot", log=gpu)
        assert len(slots) == 1 and "CUDA_VISIBLE_DEVICES" not in next(iter(slots.values()))
        job = service.api.upload(service.files, train_job())
        final = service.wait_final_succeeded(job["id"], gpu)
        [run] = service.train_runs(job["id"])
        assert run.device == "cpu" and run_pid(run) in slots
        assert final["metrics"]["train"]["device"] == "cpu"  # the API's job JSON
        workspace = service.workspace(job["id"])
        assert json.loads((workspace / "train" / ".done").read_text())["metrics"]["device"] == "cpu"
        assert json.loads((workspace / "report" / "report.json").read_text())["stages"]["train"]["device"] == "cpu"
        assert "<th scope=\"col\">Device</th>" in (workspace / "report" / "index.html").read_text()
        gpu.process.send_signal(signal.SIGTERM)  # the parent only: it stops its slot
        assert gpu.process.wait(60) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in slots)
    finally:
        for process in (gpu, cpu, serve):
            process.stop()
        service.api.close()
        service.store.close()


def test_celery_gpu_worker_runs_one_slot_per_gpu_and_two_jobs_at_once(
        tmp_path: Path, redis_url: str, sfm_workspace: Path) -> None:
    service, serve = start_api(tmp_path, sfm_workspace, {"SPACEPORT_BROKER_URL": redis_url}, [])
    cpu = ServiceProcess(["worker", "--queues", "cpu", "--concurrency", "2"], service.env, tmp_path / "cpu.log")
    gpu = ServiceProcess(["worker", "--queues", "gpu", "--gpus", "all"], {**service.env, **TWO_GPUS},
                         tmp_path / "gpu.log")
    try:
        cpu.start()
        gpu.start()
        slots = wait_until(lambda: len(found := slot_processes(gpu)) == 2 and found, 30, what="two slots", log=gpu)
        by_gpu = {env["CUDA_VISIBLE_DEVICES"]: pid for pid, env in slots.items()}
        assert sorted(by_gpu) == ["0", "1"]
        jobs = [service.api.upload(service.files, train_job())["id"] for _ in range(2)]
        wait_until(lambda: both_training(service, jobs), 300, what="both jobs training at once", log=gpu)
        for job_id in jobs:
            service.wait_final_succeeded(job_id, gpu)
        runs = assert_ran_together(service, jobs)
        assert {run_pid(run) for run in runs} == set(slots)  # one job per slot
        for run in runs:
            assert run.device == "cpu"
            pinned = next(cuda for cuda, pid in by_gpu.items() if pid == run_pid(run))
            log = (service.workspace(run.job_id) / "logs" / "train.log").read_text()
            assert f"CUDA_VISIBLE_DEVICES={pinned}" in log
        # a slot that dies is started again, pinned to the same GPU
        gpu1 = by_gpu["1"]
        os.kill(gpu1, signal.SIGKILL)
        restarted = wait_until(lambda: [pid for pid, env in slot_processes(gpu).items()
                                        if pid != gpu1 and env.get("CUDA_VISIBLE_DEVICES") == "1"], 30,
                               what="slot gpu1 started again", log=gpu)
        assert len(restarted) == 1 and by_gpu["0"] in slot_processes(gpu)
    finally:
        for process in (gpu, cpu, serve):
            process.stop()
        service.api.close()
        service.store.close()


def test_embedded_worker_runs_a_training_on_each_gpu_slot(tmp_path: Path, sfm_workspace: Path) -> None:
    service, serve = start_api(tmp_path, sfm_workspace, TWO_GPUS, ["--cpu-slots", "2"])
    try:
        assert "gpu: gpu0 (GPU 0, CUDA_VISIBLE_DEVICES=0), gpu1 (GPU 1, CUDA_VISIBLE_DEVICES=1)" in serve.tail()
        jobs = [service.api.upload(service.files, train_job())["id"] for _ in range(2)]
        wait_until(lambda: both_training(service, jobs), 300, what="both jobs training at once", log=serve)
        for job_id in jobs:
            service.wait_final_succeeded(job_id, serve)
        runs = assert_ran_together(service, jobs)
        pinned = set()
        for run in runs:
            assert run.device == "cpu"
            log = (service.workspace(run.job_id) / "logs" / "train.log").read_text()
            pinned |= {value for value in ("0", "1") if f"CUDA_VISIBLE_DEVICES={value}\n" in log}
        assert pinned == {"0", "1"}  # one training per GPU slot, each process pinned to its GPU
    finally:
        serve.stop()
        service.api.close()
        service.store.close()
