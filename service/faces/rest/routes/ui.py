"""The dashboard at /ui: static files from service/faces/rest/ui/static/, nothing rendered here.

    GET /ui                    the job list
    GET /ui/jobs/<job-id>      a job's page (the same HTML; the script reads the path)
    GET /ui/compare?jobs=a,b   several jobs' loss curves on one chart (the same HTML)
    GET /ui/static/<file>      the script, the style sheet, the vendored chart library

Invariants:
- The page holds no secret and no job data: the script fetches the job API (/v1/...) as
  any client does, with the API key the user pasted (kept in sessionStorage), so the
  pages themselves need no authentication.
- Job-provided text reaches the page only through textContent, never as HTML; the
  Content-Security-Policy allows scripts and styles from this origin only, so even a
  mistake there could not run an injected script.
- Static paths resolve inside service/faces/rest/ui/static/ or are 404: no traversal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse

from service.faces.rest.routes.jobs import JobId

router = APIRouter(prefix="/ui", include_in_schema=False)

STATIC = Path(__file__).resolve().parents[1] / "ui" / "static"

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Always the current script: a stale cached one could call an older API.
    "Cache-Control": "no-cache",
}


def _page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


@router.get("")
def job_list_page() -> FileResponse:
    return _page()


@router.get("/jobs/{job_id}")
def job_page(job_id: JobId) -> FileResponse:
    return _page()


@router.get("/compare")
def compare_page() -> FileResponse:
    return _page()


@router.get("/static/{name:path}")
def static_file(name: Annotated[str, PathParameter(max_length=200)]) -> FileResponse:
    path = (STATIC / name).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file() or path.name == "index.html":
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    return FileResponse(path, headers=SECURITY_HEADERS)
