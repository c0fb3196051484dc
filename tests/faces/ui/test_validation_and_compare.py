"""A finished job's validation metrics on its page, and several jobs' loss curves on one
chart, in a real headless Chromium over a real API server, store and trainers. The chart
is checked by what it holds (its series, read back from uPlot), not by its pixels."""

from __future__ import annotations

import json
from typing import Any

from playwright.sync_api import expect

from tests.servers import ApiServer, demo_job


def test_validation_metrics_and_loss_curves_of_several_jobs(
    api_server: ApiServer, page: Any
) -> None:
    with api_server.client() as client:
        finished = []
        for name, rate in (("compare-a", 0.003), ("compare-b", 0.01)):
            created = client.post("/v1/jobs", json=demo_job(name, epochCount=2, learningRate=rate))
            assert created.status_code == 201, created.text
            finished.append(created.json()["jobId"])
        # Listed but not picked: it must not reach the chart.
        other = client.post("/v1/jobs", json=demo_job("not-compared")).json()["jobId"]
        assert client.post(f"/v1/jobs/{other}/stop").status_code == 202
        jobs = [api_server.wait_for(job_id, {"COMPLETED"}, timeout=400) for job_id in finished]
        metrics = [client.get(f"/v1/jobs/{job_id}/metrics").json() for job_id in finished]
    api_server.wait_for(other, {"STOPPED"}, timeout=120)

    # The job page: one row per evaluation, with the loss and the scores the job reports.
    job, rows = jobs[0], metrics[0]["validation"]
    assert len(rows) == 2 and job["progress"]["validationMetrics"]  # one an epoch
    names = sorted(job["progress"]["validationMetrics"])
    assert "token_accuracy" in names
    page.goto(f"{api_server.url}/ui/jobs/{job['jobId']}")
    table = page.locator("#validation-metrics")
    expect(table).to_have_attribute("data-rows", "2")
    expect(table).to_be_visible()
    headers = table.locator("th").all_text_contents()
    assert headers[:3] == ["Step", "Epoch", "Validation loss"] and "Token accuracy" in headers
    for index, row in enumerate(rows):
        cells = table.locator(f'tbody tr[data-step="{row["step"]}"] td')
        values = {
            cell.get_attribute("data-metric"): cell.get_attribute("data-value")
            for cell in cells.all()
        }
        assert float(values["validation_loss"]) == row["validationLoss"], index
        for name in names:
            assert float(values[name]) == row["metrics"][name], (index, name)
    last = job["progress"]["validationMetrics"]["token_accuracy"]
    summary = page.locator("#job-summary dt", has_text="Validation token accuracy")
    expect(summary).to_have_count(1)
    shown = summary.locator("xpath=following-sibling::dd[1]").text_content()
    assert abs(float(shown) - last) < 1e-3

    # The list: pick the two finished jobs, then Compare.
    page.goto(f"{api_server.url}/ui")
    compare = page.locator("#compare-button")
    for job_id in (*finished, other):
        page.locator(f'tr[data-job-id="{job_id}"]').wait_for()
    expect(compare).to_be_disabled()
    for job_id in finished:
        page.locator(f'tr[data-job-id="{job_id}"] input.compare-pick').check()
    expect(compare).to_be_enabled()
    compare.click()
    page.wait_for_url("**/ui/compare?jobs=*")
    chart = page.locator("#compare-chart")
    page.wait_for_function(
        "JSON.parse(document.querySelector('#compare-chart').dataset.series).length === 4"
    )
    series = json.loads(chart.get_attribute("data-series"))
    assert chart.locator("canvas").count() >= 1  # uPlot drew it
    assert {each["jobId"] for each in series} == set(finished)
    for job, job_metrics in zip(jobs, metrics, strict=True):
        mine = {each["kind"]: each for each in series if each["jobId"] == job["jobId"]}
        assert set(mine) == {"training", "validation"}
        assert mine["training"]["points"] == len(job_metrics["training"]) > 0
        assert mine["validation"]["points"] == len(job_metrics["validation"]) == 2
        for each in mine.values():
            assert each["label"].startswith(f"{job['jobName']} ({job['jobId']})")
    legend = page.locator("#compare-chart .u-legend").text_content()
    assert "compare-a" in legend and "compare-b" in legend and "not-compared" not in legend
    expect(page.locator("#compare-jobs li")).to_have_count(2)

    # The comparison is in the URL: a reload draws the same series.
    page.reload()
    page.wait_for_function(
        "JSON.parse(document.querySelector('#compare-chart').dataset.series).length === 4"
    )
    assert json.loads(chart.get_attribute("data-series")) == series
