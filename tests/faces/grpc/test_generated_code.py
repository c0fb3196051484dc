"""The committed gRPC code is what proto/ generates (and a change to proto/ is caught)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GENERATED = ROOT / "clients" / "python" / "tuneforge" / "v1"


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_regenerating_from_proto_gives_no_diff() -> None:
    result = _check(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "generated code is current" in result.stdout
    names = sorted(path.name for path in GENERATED.glob("*_pb2*"))
    assert names == ["fine_tuning_pb2.py", "fine_tuning_pb2.pyi", "fine_tuning_pb2_grpc.py"]


def test_a_proto_change_without_regenerating_is_caught(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(GENERATED, tmp_path / "clients" / "python" / "tuneforge" / "v1")
    proto = tmp_path / "proto" / "tuneforge" / "v1" / "fine_tuning.proto"
    text = proto.read_text()
    proto.write_text(
        text.replace("  string job_id = 1;\n}", "  string job_id = 1;\n  bool x = 2;\n}")
    )
    assert proto.read_text() != text

    result = _check(tmp_path)
    assert result.returncode == 1
    assert "run `make proto`" in result.stdout
    assert "regenerated/tuneforge/v1/fine_tuning_pb2.py" in result.stdout
