"""The layers hold: `make lint` runs import-linter over the contracts in pyproject.toml.

Each contract is shown to break on an import planted in a copy of the tree, and to hold
on the tree as it is; so a contract that no longer checks anything fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
SERVICE_LAYERS = (
    "the service's layers: server, faces, core, control, webhooks, auth and observability, "
    "settings, errors"
)


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'clients' / 'python'}")
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_of_the_tree(destination: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("jobstore", "service", "trainer"):
        shutil.copytree(ROOT / package, destination / package, ignore=ignore)
    shutil.copytree(
        ROOT / "clients" / "python" / "tuneforge",
        destination / "clients" / "python" / "tuneforge",
        ignore=ignore,
    )
    shutil.copy(ROOT / "pyproject.toml", destination / "pyproject.toml")
    return destination


def test_the_tree_keeps_every_contract() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout
    assert "Contracts: 7 kept, 0 broken." in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        (
            "trainer/outcome.py",
            "from trainer import recipe",  # the recipe imports outcome: a cycle
            "the trainer's modules import one another without a cycle",
        ),
        (
            "trainer/planted.py",
            "from service.core import jobs",
            "the trainer imports only jobstore and itself",
        ),
        (
            "trainer/planted.py",
            "import tuneforge.convert",
            "the trainer imports only jobstore and itself",
        ),
        (
            "jobstore/planted.py",
            "from service.settings import Settings",
            "jobstore (the shared contract) imports no other layer",
        ),
        (
            "service/planted.py",
            "from trainer import recipe",
            "the service never imports the trainer or the client SDK",
        ),
        (
            "service/faces/grpc/planted.py",
            "from tuneforge import convert",
            "the service never imports the trainer or the client SDK",
        ),
        (
            "clients/python/tuneforge/planted.py",
            "from jobstore import documents",
            "the client SDK imports neither the service, the trainer nor jobstore",
        ),
        (
            "service/core/job_service.py",
            "from service.faces.rest import deps",
            SERVICE_LAYERS,
        ),
        (
            "service/control/reconciler.py",
            "from service.faces.grpc import mapping",
            SERVICE_LAYERS,
        ),
        (
            "service/control/reconciler.py",
            "from service.core import jobs",  # the control plane never calls the core
            SERVICE_LAYERS,
        ),
        (
            "service/faces/rest/deps.py",
            "from service.server import replica",
            SERVICE_LAYERS,
        ),
        (
            "service/settings.py",
            "from service.control.launch import gpus",
            SERVICE_LAYERS,
        ),
        (
            "service/faces/bedrock/planted.py",
            "from service.faces.rest import errors",
            "the faces (REST, gRPC, Bedrock, OpenAI) never import each other",
        ),
    ],
    ids=[
        "trainer-cycle",
        "trainer->service",
        "trainer->client",
        "jobstore->service",
        "service->trainer",
        "grpc-face->client",
        "client->jobstore",
        "core->face",
        "reconciler->face",
        "control->core",
        "face->server",
        "settings->control",
        "face->face",
    ],
)
def test_a_planted_import_breaks_its_contract(
    tmp_path: Path, module: str, planted: str, broken: str
) -> None:
    tree = _copy_of_the_tree(tmp_path)
    path = tree / module
    existing = path.read_text() if path.exists() else '"""Planted by a test."""\n'
    path.write_text(existing + f"\n{planted}  # planted\n")

    result = _lint_imports(tree)

    assert result.returncode != 0, result.stdout
    # The contract's name is followed by BROKEN (import-linter may wrap a long name).
    report = " ".join(result.stdout.split())
    assert f"{broken} BROKEN" in report or f"{broken}BROKEN" in report, result.stdout
    importer = module.removeprefix("clients/python/").removesuffix(".py").replace("/", ".")
    if "cycle" in broken:  # named as the dependency to remove to break the cycle
        assert ".recipe -> .outcome" in result.stdout, result.stdout
    else:
        assert f"{importer} -> " in result.stdout, result.stdout
