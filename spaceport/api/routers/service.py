"""GET /healthz (no key needed) and GET /metrics (Prometheus text format)."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from spaceport.api.deps import current_owner, get_store
from spaceport.jobs.models import Owner
from spaceport.jobs.store import Store

router = APIRouter(tags=["service"])


@router.get("/healthz", summary="Liveness: the API answers and its database too")
def healthz(store: Store = Depends(get_store)) -> dict[str, str]:
    store.job_counts()
    return {"status": "ok"}


class StoreCollector(Collector):
    """Figures read from the store at each scrape (shared by every API process and worker)."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("spaceport_jobs", "Jobs by state", labels=["state"])
        for state, count in self.store.job_counts().items():
            jobs.add_metric([state], count)
        yield jobs
        depth = GaugeMetricFamily("spaceport_queue_depth", "Jobs waiting for a worker, by the resource their next "
                                  "stage needs", labels=["resource"])
        for resource, count in self.store.queue_depth().items():
            depth.add_metric([resource], count)
        yield depth
        durations = SummaryMetricFamily("spaceport_stage_duration_seconds", "Durations of ended stage runs",
                                        labels=["stage", "state"])
        for stats in self.store.stage_stats():
            durations.add_metric([stats.stage, stats.state], count_value=stats.count, sum_value=stats.seconds_sum)
        yield durations


@router.get("/metrics", response_class=Response, summary="Prometheus metrics: jobs by state, queue depth, "
            "stage durations")
def metrics(_: Owner = Depends(current_owner), store: Store = Depends(get_store)) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
