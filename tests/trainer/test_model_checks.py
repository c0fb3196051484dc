"""The base-model safety checks, on copies of the demo model directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jobstore.storage import ObjectStore, parse_s3_uri
from tests.trainer.jobs import Demo
from trainer.errors import ModelLoadError
from trainer.model import check_model_directory, download_model_metadata

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


# -- a dry run's view of a model: its files listed, its weights left in the store ------


def test_a_dry_run_reads_the_models_files_but_its_weights_and_counts_its_parameters(
    object_store: ObjectStore, demo: Demo, model_dir: Path, tmp_path: Path
) -> None:
    from safetensors import safe_open

    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    uri = f"s3://{demo.bucket}/models/dry-run-check/"
    object_store.upload_directory(model_dir, parse_s3_uri(uri, field="m").as_prefix())
    local = tmp_path / "metadata"

    names, parameters = download_model_metadata(object_store, uri, local)

    assert sorted(names) == sorted(
        p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()
    )
    assert not list(local.rglob("*.safetensors"))  # the weights stayed in the store
    assert not (local / "pytorch_model.bin").exists()  # nor other weights
    assert (local / "config.json").is_file() and (local / "tokenizer.json").is_file()
    expected = 0
    for weights in model_dir.glob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as opened:
            expected += sum(opened.get_tensor(name).numel() for name in opened.keys())  # noqa: SIM118
    assert parameters == expected > 0
    # The same refusal as for a downloaded directory, from the listed names.
    with pytest.raises(ModelLoadError, match=r"pytorch_model\.bin"):
        check_model_directory(local, uri, names=names)
    check_model_directory(local, uri, names=[n for n in names if not n.endswith(".bin")])
