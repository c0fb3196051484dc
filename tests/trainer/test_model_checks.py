"""The base-model safety checks, on copies of the demo model directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainer.errors import ModelLoadError
from trainer.model import check_model_directory

URI = "s3://models/tiny/"


@pytest.fixture
def model_dir(demo_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo_model_dir, tmp_path / "model"))


def test_the_demo_model_passes(model_dir: Path) -> None:
    check_model_directory(model_dir, URI)


@pytest.mark.parametrize(
    "name", ["pytorch_model.bin", "weights.pt", "model.pth", "state.pkl", "last.ckpt", "sub/x.pt"]
)
def test_pickle_weights_are_refused(model_dir: Path, name: str) -> None:
    (model_dir / name).parent.mkdir(exist_ok=True)
    (model_dir / name).write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelLoadError, match=name.replace(".", r"\.")):
        check_model_directory(model_dir, URI)


def test_python_files_are_refused(model_dir: Path) -> None:
    (model_dir / "modeling_evil.py").write_text("import os\n")
    with pytest.raises(ModelLoadError, match=r"modeling_evil\.py"):
        check_model_directory(model_dir, URI)


def test_no_safetensors_is_refused(model_dir: Path) -> None:
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights"):
        check_model_directory(model_dir, URI)


def test_no_config_is_refused(model_dir: Path) -> None:
    (model_dir / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        check_model_directory(model_dir, URI)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("config.json", {"auto_map": {"AutoModelForCausalLM": "evil.Model"}}),
        ("config.json", {"text_config": {"auto_map": {"AutoConfig": "evil.Config"}}}),
        ("config.json", {"trust_remote_code": True}),
        ("tokenizer_config.json", {"auto_map": {"AutoTokenizer": ["evil.Tok", None]}}),
    ],
)
def test_configs_asking_for_remote_code_are_refused(
    model_dir: Path, name: str, extra: dict[str, object]
) -> None:
    path = model_dir / name
    path.write_text(json.dumps(json.loads(path.read_text()) | extra))
    with pytest.raises(ModelLoadError, match=f"{name} asks for remote code"):
        check_model_directory(model_dir, URI)
