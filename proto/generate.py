"""Generate the Python gRPC code from `proto/`, or check that the committed code is current.

    python proto/generate.py           # regenerate clients/python/tuneforge/v1/*_pb2*.py[i]
    python proto/generate.py --check   # generate into a temporary folder and compare;
                                       # exit 1 with a diff if anything differs

The output depends on the grpcio-tools release (it bundles protoc), so the release is
pinned in requirements/pins.txt; `make proto` and `make proto-check` use the project's
virtual environment.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.resources
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
CLIENT_ROOT = ROOT / "clients" / "python"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(output: Path) -> None:
    """Run protoc (from grpcio-tools) over every .proto file into `output`."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    sources = [str(path.relative_to(PROTO_ROOT)) for path in proto_files()]
    if not sources:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    arguments = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={output}",
        f"--pyi_out={output}",
        f"--grpc_python_out={output}",
        *sources,
    ]
    if protoc.main(arguments) != 0:
        raise SystemExit("protoc failed")


def generated_files(root: Path) -> dict[str, str]:
    """Relative path -> text of every generated file under `root`'s packages."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES) and ".venv" not in path.parts:
            if "build" in path.relative_to(root).parts:
                continue
            found[path.relative_to(root).as_posix()] = path.read_text()
    return found


def check() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        generate(Path(scratch))
        fresh = generated_files(Path(scratch))
    committed = generated_files(CLIENT_ROOT)
    problems = []
    for name in sorted(set(fresh) | set(committed)):
        if name not in committed:
            problems.append(f"missing: clients/python/{name} (run `make proto`)\n")
        elif name not in fresh:
            problems.append(f"stale: clients/python/{name} has no .proto any more\n")
        elif fresh[name] != committed[name]:
            problems.extend(
                difflib.unified_diff(
                    committed[name].splitlines(keepends=True),
                    fresh[name].splitlines(keepends=True),
                    f"committed/{name}",
                    f"regenerated/{name}",
                )
            )
    if problems:
        sys.stdout.writelines(problems)
        print("\nthe generated code is not what proto/ gives: run `make proto` and commit")
        return 1
    print(f"generated code is current ({len(fresh)} files from {len(proto_files())} protos)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    if parser.parse_args().check:
        return check()
    generate(CLIENT_ROOT)
    print(f"wrote {', '.join(sorted(generated_files(CLIENT_ROOT)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
