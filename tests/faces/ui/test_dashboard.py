"""The dashboard at /ui in a real headless Chromium, over a real API server, store and
trainer: the job list, a running job's live loss curves, text-only rendering of job
strings, and the API key sent as a bearer token."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect

from jobstore.documents import (
    DataLocation,
    HyperParameters,
    JobControl,
    JobSpec,
    new_job_id,
    utc_now,
)
from jobstore.storage import ObjectStore
from jobstore.store import JobStore
from tests.faces.ui.artifacts import check_loss_plot
from tests.servers import TERMINAL, ApiServer, demo_job

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chart_points(page: Any) -> int:
    return int(page.get_attribute("#loss-chart", "data-points"))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_running_job_page_draws_live_loss_curves_and_list_shows_it(
    api_server: ApiServer, object_store: ObjectStore, page: Any, tmp_path: Path
) -> None:
    # Enough epochs (the most allowed) that the job is still running while the pages are
    # looked at, on a quiet machine too (20 epochs were over before the list page); the
    # test stops it at the end.
    with api_server.client() as client:
        created = client.post("/v1/jobs", json=demo_job("dashboard-live", epochCount=100))
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]
    try:
        api_server.wait_for(job_id, {"RUNNING"}, timeout=180)
        page.goto(f"{api_server.url}/ui/jobs/{job_id}")
        expect(page.locator("#job-name")).to_have_text("dashboard-live")

        # The trainer uploads its metrics every ~10 s; the page polls every 2 s.
        page.wait_for_function(
            "Number(document.querySelector('#loss-chart').dataset.points) > 0", timeout=180_000
        )
        first = _chart_points(page)
        assert page.locator("#loss-chart canvas").count() >= 1  # uPlot drew it
        # Live: more points arrive without a reload.
        page.wait_for_function(
            f"Number(document.querySelector('#loss-chart').dataset.points) > {first}",
            timeout=180_000,
        )
        assert _chart_points(page) > first
        state = httpx.get(f"{api_server.url}/v1/jobs/{job_id}", timeout=10).json()["state"]
        assert state == "RUNNING", "the screenshot should show a running job"

        screenshot = tmp_path / "job-page.png"
        page.screenshot(path=str(screenshot), full_page=True)
        data = screenshot.read_bytes()
        width, height = _png_size(data)
        assert width >= 1000 and height >= 600 and len(data) > 10_000

        # Hyperparameters and events are on the page, as text.
        hyper = page.locator("#hyperparameters tr", has_text="epochCount")
        assert hyper.locator("td").nth(1).text_content() == "100"
        assert page.locator("#events li", has_text="CREATED").count() == 1
        assert page.locator("#job-summary .state").text_content() in {"RUNNING", "STOPPING"}

        # The list shows the job with its state and a progress bar.
        page.goto(f"{api_server.url}/ui")
        row = page.locator(f'#job-table tr[data-job-id="{job_id}"]')
        row.wait_for()
        assert row.locator("a").text_content() == "dashboard-live"
        assert row.locator("a").get_attribute("href") == f"/ui/jobs/{job_id}"
        assert row.locator(".state").text_content() in {"RUNNING", "STOPPING"}
        bar = row.locator("progress")
        assert int(bar.get_attribute("max")) > 0
        assert int(bar.get_attribute("value")) > 0
    finally:
        httpx.post(f"{api_server.url}/v1/jobs/{job_id}/stop", timeout=30)
    stopped = api_server.wait_for(job_id, TERMINAL, timeout=120)
    assert stopped["state"] == "STOPPED"
    check_loss_plot(object_store, stopped["output"]["outputS3Uri"])  # a stopped job has one too
    # ... and follows it to its end.
    page.wait_for_function(
        f"document.querySelector('tr[data-job-id=\"{job_id}\"] .state').textContent "
        f"=== '{stopped['state']}'",
        timeout=30_000,
    )


def test_job_strings_render_as_text_not_html(
    api_server: ApiServer, object_store: ObjectStore, page: Any
) -> None:
    """A name, tag or event holding markup shows as that text; no script of it runs.

    The REST API refuses such a name, so the job is written straight into the store, as
    any writer of the store could."""
    hostile_name = '<script>window.__xss = "name"</script>'
    hostile_tag = '<img src="x" onerror="window.__xss = \'tag\'">'
    hostile_event = "<b>bold</b><img src=x onerror=\"window.__xss='event'\">"
    store = JobStore(object_store, api_server.state_bucket)
    job_id = new_job_id()
    store.create(
        JobSpec(
            jobId=job_id,
            jobName=hostile_name,
            createdAt=utc_now(),
            baseModelIdentifier="s3://demo/models/tiny-llama/",
            trainingDataConfig=DataLocation(s3Uri="s3://demo/datasets/sample-train.jsonl"),
            outputDataConfig=DataLocation(s3Uri="s3://demo/output/"),
            hyperParameters=HyperParameters(),
            tags={"note": hostile_tag},
        )
    )
    store.put_control(job_id, JobControl(stopRequested=True, stopRequestedAt=utc_now()))
    store.append_event(job_id, "NOTE", hostile_event)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    page.goto(f"{api_server.url}/ui/jobs/{job_id}")
    page.locator("#events li", has_text="NOTE").wait_for()
    assert page.text_content("#job-name") == hostile_name
    assert page.locator("#job-summary dd", has_text=hostile_tag).count() == 1
    assert page.locator("#events li", has_text=hostile_event).count() == 1
    assert page.locator("main img, main b, main script").count() == 0

    page.goto(f"{api_server.url}/ui")
    row = page.locator(f'#job-table tr[data-job-id="{job_id}"]')
    row.wait_for()
    assert row.locator("a").text_content() == hostile_name
    time.sleep(1)  # an injected onerror handler would have fired by now
    assert page.evaluate("window.__xss") is None
    assert page.locator("script").count() == 2  # the chart library and the dashboard
    assert dialogs == []


def test_api_key_is_kept_in_session_storage_and_sent_as_bearer(
    api_server: ApiServer, page: Any
) -> None:
    page.goto(f"{api_server.url}/ui")
    page.locator("#job-table").wait_for()
    with page.expect_request(lambda request: "/v1/jobs" in request.url) as sent:
        page.fill("#api-key", "test-key-0123")
        page.click("#api-key-form button[type=submit]")
    assert sent.value.headers.get("authorization") == "Bearer test-key-0123"
    assert page.evaluate("sessionStorage.getItem('tuneforge.apiKey')") == "test-key-0123"
    assert page.evaluate("localStorage.length") == 0
    assert page.input_value("#api-key") == ""  # not left in the form

    with page.expect_request(lambda request: "/v1/jobs" in request.url) as sent:
        page.click("#api-key-forget")
    assert "authorization" not in sent.value.headers
    assert page.evaluate("sessionStorage.getItem('tuneforge.apiKey')") is None


def test_dashboard_pages_carry_a_content_security_policy(api_server: ApiServer) -> None:
    for path in (
        "/ui",
        "/ui/jobs/0000000000000000",
        "/ui/compare?jobs=0000000000000000",
        "/ui/static/dashboard.js",
    ):
        response = httpx.get(api_server.url + path, timeout=10)
        assert response.status_code == 200, path
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    for path in ("/ui/static/../../settings.py", "/ui/static/%2e%2e/%2e%2e/settings.py"):
        assert httpx.get(api_server.url + path, timeout=10).status_code == 404
