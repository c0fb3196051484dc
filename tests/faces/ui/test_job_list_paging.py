"""The job list's state filter and paging in a real headless Chromium over a real API
server: the API filters and pages (a page of a filtered list is full, not a page of all
jobs thinned out), and the URL keeps both, so a reload shows the same page."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlparse

from playwright.sync_api import expect

from tests.servers import ApiServer, demo_job


def _shown(page: Any, expected: list[str]) -> None:
    """The list shows exactly these job ids, in this order (waiting for it)."""
    rows = page.locator("#job-table tbody tr")
    expect(rows).to_have_count(len(expected))
    for index, job_id in enumerate(expected):
        expect(rows.nth(index)).to_have_attribute("data-job-id", job_id)


def _query(page: Any) -> dict[str, list[str]]:
    return parse_qs(urlparse(page.url).query)


def test_state_filter_and_paging_follow_the_api_and_survive_a_reload(
    api_server: ApiServer, page: Any
) -> None:
    # Oldest first: stopped, paused, stopped, paused, stopped. Each is stopped or paused as
    # soon as it is created (before a trainer gets far, if one starts at all).
    kinds = ["stop", "pause", "stop", "pause", "stop"]
    ids: list[str] = []
    with api_server.client() as client:
        for index, kind in enumerate(kinds):
            created = client.post("/v1/jobs", json=demo_job(f"list-{index}-{kind}"))
            assert created.status_code == 201, created.text
            ids.append(created.json()["jobId"])
            assert client.post(f"/v1/jobs/{ids[-1]}/{kind}").status_code == 202
    for job_id, kind in zip(ids, kinds, strict=True):
        api_server.wait_for(job_id, {"STOPPED" if kind == "stop" else "PAUSED"}, timeout=120)
    newest_first = ids[::-1]
    stopped = [job_id for job_id, kind in zip(ids, kinds, strict=True) if kind == "stop"][::-1]
    paused = [job_id for job_id, kind in zip(ids, kinds, strict=True) if kind == "pause"][::-1]

    previous, following = page.locator("#page-previous"), page.locator("#page-next")
    pager = page.locator("#pager")

    # All jobs, two a page: three pages, walked forward and back.
    page.goto(f"{api_server.url}/ui?limit=2")
    _shown(page, newest_first[:2])
    expect(page.locator("#page-size")).to_have_value("2")
    expect(previous).to_be_disabled()
    following.click()
    _shown(page, newest_first[2:4])
    expect(pager).to_have_attribute("data-page", "2")
    following.click()
    _shown(page, newest_first[4:])
    expect(following).to_be_disabled()
    assert _query(page)["limit"] == ["2"] and "pageToken" in _query(page)
    page.reload()
    _shown(page, newest_first[4:])
    expect(pager).to_have_attribute("data-page", "3")
    previous.click()
    _shown(page, newest_first[2:4])
    previous.click()
    _shown(page, newest_first[:2])
    assert "pageToken" not in _query(page)

    # STOPPED only: the API's pages of that filter (a full first page, then the rest).
    with page.expect_request(lambda request: "status=STOPPED" in request.url) as sent:
        page.select_option("#state-filter", "STOPPED")
    assert parse_qs(urlparse(sent.value.url).query)["limit"] == ["2"]
    _shown(page, stopped[:2])
    assert _query(page)["state"] == ["STOPPED"]
    following.click()
    _shown(page, stopped[2:])
    expect(following).to_be_disabled()
    page.reload()
    expect(page.locator("#state-filter")).to_have_value("STOPPED")
    _shown(page, stopped[2:])
    expect(page.locator("#job-table .state")).to_have_text(["STOPPED"])

    # Another state starts at its first page; the back button returns to the filter before.
    page.select_option("#state-filter", "PAUSED")
    _shown(page, paused)
    assert "pageToken" not in _query(page)
    expect(pager).to_have_attribute("data-page", "1")
    page.go_back()
    expect(page.locator("#state-filter")).to_have_value("STOPPED")
    _shown(page, stopped[2:])

    page.select_option("#state-filter", "COMPLETED")
    expect(page.locator("#no-jobs")).to_have_text("No COMPLETED jobs.")
    _shown(page, [])
