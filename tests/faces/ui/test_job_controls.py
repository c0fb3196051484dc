"""The job page's Stop, Pause and Resume buttons in a real headless Chromium, over a real
API server, store and trainer: each drives the job through the API (asserted there, not
on the page), shows only when the job's state allows it, is disabled while its call is in
flight, Stop asks first, a refusal shows the API's message, and the pasted API key goes
with every call."""

from __future__ import annotations

import time
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.servers import TERMINAL, ApiServer, demo_job


def _buttons(page: Any) -> tuple[Any, Any, Any]:
    return page.locator("#job-pause"), page.locator("#job-resume"), page.locator("#job-stop")


class _Held:
    """The page's `method` requests to `url_glob`, held (not answered) until release():
    then they go on to the real server, and later ones are no longer held."""

    def __init__(self, page: Any, url_glob: str, method: str) -> None:
        self.page, self.url_glob, self.method = page, url_glob, method
        self.routes: list[Any] = []
        self.holding = True
        page.route(url_glob, self._handle)

    def _handle(self, route: Any) -> None:
        if self.holding and route.request.method == self.method:
            self.routes.append(route)
        else:
            route.continue_()

    def wait_for_one(self, timeout: float = 30.0) -> None:
        """Until the held request has reached Python (Playwright hands routes over
        between the page's events, not at the click)."""
        deadline = time.monotonic() + timeout
        while not self.routes:
            assert time.monotonic() < deadline, f"no {self.method} {self.url_glob} was sent"
            self.page.wait_for_timeout(50)
        assert len(self.routes) == 1, self.routes

    def release(self) -> None:
        self.holding = False
        for route in self.routes:
            route.continue_()
        self.page.unroute(self.url_glob, self._handle)


def test_pause_resume_and_stop_buttons_drive_a_running_job(
    api_server: ApiServer, page: Any
) -> None:
    with api_server.client() as client:
        created = client.post("/v1/jobs", json=demo_job("dashboard-controls", epochCount=100))
        assert created.status_code == 201, created.text
        job_id = created.json()["jobId"]
    pause, resume, stop = _buttons(page)
    state = page.locator("#job-summary .state")
    try:
        api_server.wait_for(job_id, {"RUNNING"}, timeout=180)
        page.goto(f"{api_server.url}/ui/jobs/{job_id}")
        expect(state).to_have_text("RUNNING")
        expect(pause).to_be_visible()
        expect(stop).to_be_visible()
        expect(resume).to_be_hidden()

        # Pause: the buttons are disabled while the call is in flight (held here).
        held = _Held(page, f"**/v1/jobs/{job_id}/pause", "POST")
        pause.click()
        expect(pause).to_be_disabled()
        expect(stop).to_be_disabled()
        held.wait_for_one()
        held.release()
        paused = api_server.wait_for(job_id, {"PAUSED"}, timeout=120)
        assert paused["pauseRequested"] is True
        expect(state).to_have_text("PAUSED")
        expect(pause).to_be_hidden()
        expect(resume).to_be_enabled()
        expect(stop).to_be_enabled()

        # Resume: queued again, a new attempt goes on from the pause's checkpoint.
        resume.click()
        resumed = api_server.wait_for(job_id, {"RUNNING"}, timeout=180)
        assert resumed["pauseRequested"] is False
        assert resumed["attempt"] == paused["attempt"] + 1
        expect(state).to_have_text("RUNNING")
        expect(pause).to_be_visible()
        expect(resume).to_be_hidden()

        # Stop asks first: declined, nothing is sent.
        dialogs: list[str] = []
        page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        stop.click()
        assert len(dialogs) == 1 and "dashboard-controls" in dialogs[0]
        with api_server.client() as client:
            assert client.get(f"/v1/jobs/{job_id}").json()["stopRequested"] is False

        page.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
        with page.expect_response(f"**/v1/jobs/{job_id}/stop") as answer:
            stop.click()
        assert answer.value.status == 202
        stopped = api_server.wait_for(job_id, TERMINAL, timeout=120)
        assert stopped["state"] == "STOPPED"
        expect(state).to_have_text("STOPPED")
        for button in (pause, resume, stop):
            expect(button).to_be_hidden()
        expect(page.locator("#job-action-error")).to_be_hidden()
    finally:
        httpx.post(f"{api_server.url}/v1/jobs/{job_id}/stop", timeout=30)


def test_actions_send_the_api_key_and_show_the_apis_refusal(
    keyed_api_server: ApiServer, page: Any
) -> None:
    server = keyed_api_server
    key = server.create_api_key("dashboard-team")
    job_ids = []
    with server.client(key) as client:
        for name in ("stop-me", "stale-page"):
            created = client.post("/v1/jobs", json=demo_job(name))
            assert created.status_code == 201, created.text
            job_ids.append(created.json()["jobId"])
            assert client.post(f"/v1/jobs/{job_ids[-1]}/pause").status_code == 202
    stop_me, stale = job_ids
    for job_id in job_ids:
        server.wait_for(job_id, {"PAUSED"}, timeout=120, api_key=key)
    pause, resume, stop = _buttons(page)

    # Without the key the API refuses the page; with it, the job and its buttons show.
    page.goto(f"{server.url}/ui/jobs/{stop_me}")
    expect(page.locator("#error")).to_contain_text("Paste an API key above")
    expect(stop).to_be_hidden()
    page.fill("#api-key", key)
    page.click("#api-key-form button[type=submit]")
    expect(page.locator("#job-summary .state")).to_have_text("PAUSED")
    expect(resume).to_be_visible()
    expect(pause).to_be_hidden()

    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_request(f"**/v1/jobs/{stop_me}/stop") as sent:
        stop.click()
    assert sent.value.headers.get("authorization") == f"Bearer {key}"
    assert server.wait_for(stop_me, TERMINAL, timeout=60, api_key=key)["state"] == "STOPPED"
    expect(page.locator("#job-summary .state")).to_have_text("STOPPED")
    expect(stop).to_be_hidden()

    # A page behind its job: its reads are held (not answered) while the job is stopped
    # elsewhere, so it still offers Resume; the API refuses it (409), and the page says
    # why, then catches up once its reads go through.
    page.goto(f"{server.url}/ui/jobs/{stale}")
    expect(resume).to_be_visible()
    held = _Held(page, f"**/v1/jobs/{stale}", "GET")
    with page.expect_request(lambda request: request.url.endswith(f"/v1/jobs/{stale}")):
        pass  # the next read is held: none after it can change the page
    with server.client(key) as client:
        assert client.post(f"/v1/jobs/{stale}/stop").status_code == 202
    assert server.wait_for(stale, TERMINAL, timeout=60, api_key=key)["state"] == "STOPPED"
    with page.expect_response(f"**/v1/jobs/{stale}/resume") as answer:
        resume.click()
    assert answer.value.status == 409
    error = page.locator("#job-action-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(f"job {stale} is STOPPED, not paused")
    held.release()
    expect(page.locator("#job-summary .state")).to_have_text("STOPPED")
    expect(resume).to_be_hidden()
    expect(stop).to_be_hidden()
