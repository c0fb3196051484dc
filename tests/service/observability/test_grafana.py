"""The Grafana dashboard (deploy/grafana/tuneforge.json) charts metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from jobstore.documents import JobState, Progress
from service.observability.metrics import Metrics, RunningJob

DASHBOARD = Path(__file__).parents[3] / "deploy" / "grafana" / "tuneforge.json"


def _exposed_names() -> set[str]:
    """Every sample name a replica exposes once each metric has a series."""
    metrics = Metrics()
    metrics.observe_request("rest", "GET /v1/jobs/{job_id}", "200", 0.01)
    metrics.observe_store_call("GetObject", 0.01, "SlowDown")
    metrics.reconcile_duration.observe(0.1)
    progress = Progress(
        step=3,
        totalSteps=10,
        trainingLoss=1.0,
        validationLoss=1.1,
        learningRate=0.001,
        tokensPerSecond=50.0,
        gpuMemoryBytes=1024,
    )
    metrics.observe_jobs([JobState.RUNNING], 0, [RunningJob("j", "t", progress)])
    metrics.webhook_deliveries.labels("failed").inc()
    body, _ = metrics.exposition()
    return {
        sample.name
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_every_dashboard_query_names_an_exposed_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert expressions
    named = {name for expr in expressions for name in re.findall(r"tuneforge_\w+", expr)}
    exposed = _exposed_names()
    assert named - exposed == set(), f"the dashboard charts unknown metrics: {named - exposed}"
    # The per-job panels, the faces and the store are all on it.
    for name in ("tuneforge_job_step", "tuneforge_request_duration_seconds_bucket"):
        assert name in named


def test_finished_jobs_series_are_removed() -> None:
    metrics = Metrics()
    metrics.observe_jobs([JobState.RUNNING], 0, [RunningJob("a", "t", Progress(step=1))])
    metrics.observe_jobs([], 0, [])
    body, _ = metrics.exposition()
    assert 'job_id="a"' not in body.decode()
