"""What `make gpu-check` needs on a GPU host's own Python, and installing only that.

A GPU host typically has its own Python with a CUDA build of torch, transformers and peft
already installed, and cannot reach a package index. This script never installs or
upgrades those (the ML stack, `ML_STACK`): it refuses to go on without them. Everything
else the service and the check import (pyproject.toml's dependencies, and httpx for the
check's client) is installed when missing, from a folder of wheels that `make gpu-wheels`
fills beforehand on a machine with the index (`--no-index`: nothing is downloaded here).

    python bench/gpu_check_install.py --wheels gpu-wheels        # install what is missing
    python bench/gpu_check_install.py --list                     # print the requirements
"""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
# The GPU host's own: a CUDA build of torch that must never be replaced by an index's.
ML_STACK = ("torch", "transformers", "peft")
# Imported by bench/gpu_check.py besides the service's own requirements.
CHECK_EXTRAS = ("httpx>=0.27",)


def requirements() -> list[Requirement]:
    """The service's runtime requirements for this interpreter, and the check's own."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(text) for text in [*project["dependencies"], *CHECK_EXTRAS]]
    return [r for r in found if r.marker is None or r.marker.evaluate()]


def missing(wanted: list[Requirement]) -> list[Requirement]:
    """The requirements that are not installed, or installed at a version out of range."""
    absent = []
    for requirement in wanted:
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            absent.append(requirement)
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            absent.append(requirement)
    return absent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=ROOT / "gpu-wheels")
    parser.add_argument(
        "--list", action="store_true", help="print the requirements to download, and stop"
    )
    args = parser.parse_args(argv)
    wanted = requirements()
    if args.list:  # what `make gpu-wheels` downloads: everything but the ML stack
        print("\n".join(str(r) for r in wanted if r.name not in ML_STACK))
        return 0
    absent = missing(wanted)
    stack = [r for r in absent if r.name in ML_STACK]
    if stack:
        print(
            f"{sys.executable} lacks {', '.join(str(r) for r in stack)}: install the host's "
            "CUDA build of torch and its transformers / peft first (never from this script)",
            file=sys.stderr,
        )
        return 2
    if not absent:
        print(f"{sys.executable}: everything gpu-check needs is installed")
        return 0
    if not args.wheels.is_dir():
        print(
            f"missing: {', '.join(str(r) for r in absent)}; no wheel folder at {args.wheels}: "
            "run `make gpu-wheels GPU_PYTHON_VERSION=<this host's X.Y>` on a machine with the "
            "package index and copy the folder here",
            file=sys.stderr,
        )
        return 2
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-index",
        "--find-links",
        str(args.wheels),
        *(str(r) for r in absent),
    ]
    print("installing:", " ".join(str(r) for r in absent), flush=True)
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
