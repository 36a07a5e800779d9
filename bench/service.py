"""Load on the job API: parallel submissions, and job reads while server-sent event streams are open.

    python bench/service.py                                   # SQLite store in a temporary data folder
    python bench/service.py --database-url postgresql://postgres@127.0.0.1:5432/bench   # PostgreSQL

Starts the API as its own uvicorn process on 127.0.0.1 (what `spaceport serve` runs, without the worker: jobs
stay queued, so the numbers are the API's and the store's alone). Then:

1. ``--jobs`` (100) ``POST /v1/jobs`` at once (JSON, an s3:// input_url), each timed; all must be 201, and
   ``GET /v1/jobs`` paged to the end must list every one of them (none lost).
2. ``GET /v1/jobs/{id}`` ``--reads`` times with ``--concurrency`` requests in flight, first with no event stream
   open, then with ``--streams`` (50) ``GET /v1/jobs/{id}/events`` streams open (each polls the store every
   0.5 s, as in production).

Prints a table and writes bench/results/service.json (or ``--out``). Latencies are wall-clock per request as
the client sees them, on whatever else the machine is doing: compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVER_CODE = """
import os, uvicorn
from spaceport.api import create_app
from spaceport.settings import Settings
uvicorn.run(create_app(Settings()), host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_key(data_dir: Path, database_url: str | None) -> str:
    from spaceport.jobs.store import open_store
    from spaceport.settings import Settings

    store = open_store(Settings(data_dir=data_dir, database_url=database_url).resolved_database_url)
    key = store.create_api_key(store.ensure_owner(f"bench-{os.getpid()}-{time.time_ns()}").id)
    store.close()
    return key


def start_server(data_dir: Path, database_url: str | None, port: int) -> subprocess.Popen:
    env = {**os.environ, "BENCH_PORT": str(port), "SPACEPORT_DATA_DIR": str(data_dir),
           "SPACEPORT_MAX_RUNNING_JOBS_PER_OWNER": "1000000"}
    if database_url:
        env["SPACEPORT_DATABASE_URL"] = database_url
    process = subprocess.Popen([sys.executable, "-c", SERVER_CODE], env=env, cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
        if process.poll() is not None:
            raise SystemExit(f"the API process exited with {process.returncode}")
    process.kill()
    raise SystemExit("the API did not answer /healthz within 60 s")


def summary(latencies: list[float], wall_s: float) -> dict:
    ordered = sorted(latencies)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"requests": len(ordered), "wall_s": round(wall_s, 3), "requests_per_s": round(len(ordered) / wall_s, 1),
            "p50_ms": round(quantile(0.5) * 1000, 1), "p99_ms": round(quantile(0.99) * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1), "mean_ms": round(statistics.fmean(ordered) * 1000, 1)}


async def timed(client: httpx.AsyncClient, method: str, path: str, **kwargs) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = await client.request(method, path, **kwargs)
    return time.perf_counter() - started, response


async def submit_all(client: httpx.AsyncClient, count: int) -> tuple[dict, list[str]]:
    body = {"input_url": "s3://bench/photos/", "steps": "full", "preset": "preview"}
    started = time.perf_counter()
    results = await asyncio.gather(*(timed(client, "POST", "/v1/jobs", json=body) for _ in range(count)))
    wall = time.perf_counter() - started
    failed = [response for _, response in results if response.status_code != 201]
    if failed:
        raise SystemExit(f"{len(failed)} of {count} submissions failed, first: {failed[0].status_code} "
                         f"{failed[0].text}")
    return summary([latency for latency, _ in results], wall), [response.json()["id"] for _, response in results]


async def listed_ids(client: httpx.AsyncClient) -> list[str]:
    ids, cursor = [], None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/jobs", params=params)).json()
        ids += [job["id"] for job in page["jobs"]]
        if not (cursor := page["next_cursor"]):
            return ids


async def read_jobs(client: httpx.AsyncClient, ids: list[str], reads: int, concurrency: int) -> dict:
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            latency, response = await timed(client, "GET", f"/v1/jobs/{ids[index % len(ids)]}")
            response.raise_for_status()
            latencies.append(latency)

    started = time.perf_counter()
    await asyncio.gather(*(one(index) for index in range(reads)))
    return summary(latencies, time.perf_counter() - started)


async def hold_stream(client: httpx.AsyncClient, job_id: str, opened: asyncio.Event, counter: list[int],
                      stop: asyncio.Event) -> None:
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        response.raise_for_status()
        counter[0] += 1
        if counter[0] == counter[1]:
            opened.set()
        lines = response.aiter_lines()
        while not stop.is_set():
            try:
                await asyncio.wait_for(anext(lines), timeout=0.5)
            except TimeoutError:
                continue
            except StopAsyncIteration:
                return


async def run(args: argparse.Namespace, url: str, key: str) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=args.jobs + args.streams + 10, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as client:
        submitted, ids = await submit_all(client, args.jobs)
        listed = set(await listed_ids(client))
        lost = sorted(set(ids) - listed)
        await read_jobs(client, ids, args.concurrency * 5, args.concurrency)  # warm-up, not counted
        baseline = await read_jobs(client, ids, args.reads, args.concurrency)
        opened, stop, counter = asyncio.Event(), asyncio.Event(), [0, args.streams]
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=None, limits=limits) as streams_client:
            tasks = [asyncio.create_task(hold_stream(streams_client, ids[index % len(ids)], opened, counter, stop))
                     for index in range(args.streams)]
            await asyncio.wait_for(opened.wait(), timeout=60)
            await asyncio.sleep(1.0)  # every stream has polled the store at least once
            under_streams = await read_jobs(client, ids, args.reads, args.concurrency)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {"submit": {**submitted, "accepted": len(ids), "listed": len(listed & set(ids)), "lost": lost},
            "get_job": baseline, "get_job_with_streams": {**under_streams, "open_streams": args.streams}}


def print_table(results: dict) -> None:
    rows = [("POST /v1/jobs", results["submit"]), ("GET /v1/jobs/{id}", results["get_job"]),
            (f"GET /v1/jobs/{{id}}, {results['get_job_with_streams']['open_streams']} SSE open",
             results["get_job_with_streams"])]
    print(f"{'requests':<34} {'n':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, row in rows:
        print(f"{name:<34} {row['requests']:>5} {row['requests_per_s']:>8} {row['p50_ms']:>8} {row['p99_ms']:>8} "
              f"{row['max_ms']:>8}")
    submit = results["submit"]
    print(f"submitted {submit['accepted']}, listed {submit['listed']}, lost {len(submit['lost'])}; load average "
          f"{results['setup']['load_average_before']} -> {results['setup']['load_average_after']} "
          f"on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100, help="parallel submissions")
    parser.add_argument("--streams", type=int, default=50, help="SSE streams held open during the second read run")
    parser.add_argument("--reads", type=int, default=500, help="GET /v1/jobs/{id} requests per read run")
    parser.add_argument("--concurrency", type=int, default=10, help="reads in flight at once")
    parser.add_argument("--database-url", default=None, help="job store; default SQLite in the data folder")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "service.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="spaceport-bench-") as folder:
        data_dir = Path(folder)
        key = make_key(data_dir, args.database_url)
        port = free_port()
        server = start_server(data_dir, args.database_url, port)
        try:
            results = asyncio.run(run(args, f"http://127.0.0.1:{port}", key))
        finally:
            server.send_signal(signal.SIGINT)  # uvicorn's graceful stop
            server.wait(30)
    results["setup"] = {"database": "postgresql" if args.database_url else "sqlite", "jobs": args.jobs,
                        "streams": args.streams, "reads": args.reads, "read_concurrency": args.concurrency,
                        "api_processes": 1, "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                        f"Python {platform.python_version()}",
                        # other work on the machine moves these figures a lot: keep the 1-minute load with them
                        "load_average_before": round(load_before, 2), "load_average_after":
                        round(os.getloadavg()[0], 2)}
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    if results["submit"]["lost"]:
        raise SystemExit(f"{len(results['submit']['lost'])} submitted jobs are missing from GET /v1/jobs")


if __name__ == "__main__":
    main()
