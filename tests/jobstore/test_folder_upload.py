"""ObjectStore.upload_directory against a real SeaweedFS: every file of a folder (nested
ones, one large enough for a multipart upload, empty ones) arrives byte for byte under
the target folder, and a refused upload is the store's error, naming where, with nothing written."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest

from jobstore.errors import StoreUnavailable
from jobstore.storage import ObjectStore, S3Location, StorageError
from service.server.embedded_s3 import EmbeddedS3


def _folder(root: Path) -> dict[str, bytes]:
    files = {
        "model.safetensors": os.urandom(9 << 20),  # over boto3's 8 MiB multipart threshold
        "config.json": b'{"model_type": "llama"}',
        "metrics/train.csv": b"step,loss\n1,2.5\n",
        "metrics/nested/deeper.txt": b"x" * 1000,
        "empty.json": b"",
    }
    for name, body in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return files


def test_every_file_arrives_under_the_folder_byte_for_byte(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    bucket = f"folders-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(bucket)
    files = _folder(tmp_path / "step-5")
    target = S3Location(bucket, "out/checkpoints/step-5/")

    keys = object_store.upload_directory(tmp_path / "step-5", target)

    assert sorted(keys) == sorted(f"out/checkpoints/step-5/{name}" for name in files)
    listed = {item["key"]: item["size"] for item in object_store.list_objects(target)}
    assert listed == {f"out/checkpoints/step-5/{n}": len(b) for n, b in files.items()}
    for name, body in files.items():
        found = object_store.get_bytes(S3Location(bucket, f"out/checkpoints/step-5/{name}"))
        assert found is not None
        assert hashlib.sha256(found[0]).digest() == hashlib.sha256(body).digest(), name


def test_an_upload_the_store_refuses_is_its_error_naming_where(
    s3_server: EmbeddedS3, object_store: ObjectStore, tmp_path: Path
) -> None:
    bucket = f"folders-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(bucket)
    _folder(tmp_path / "step-5")
    wrong_key = ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key="not-the-secret",
        region="us-east-1",
    )
    with pytest.raises(StorageError) as refused:
        wrong_key.upload_directory(tmp_path / "step-5", S3Location(bucket, "out/"))
    assert not isinstance(refused.value, StoreUnavailable)  # refused, not unreachable
    assert f"s3://{bucket}/out/" in str(refused.value)
    assert not list(object_store.list_objects(S3Location(bucket, "out/")))


def test_a_single_file_upload_refused_is_the_stores_error_too(
    s3_server: EmbeddedS3, object_store: ObjectStore, tmp_path: Path
) -> None:
    """boto3's upload_file wraps the refusal in its own S3UploadFailedError; callers
    get the store's error, as from every other call."""
    bucket = f"folders-{uuid.uuid4().hex[:10]}"
    object_store.ensure_bucket(bucket)
    path = tmp_path / "trainer.log"
    path.write_bytes(b"a line\n")
    wrong_key = ObjectStore(
        endpoint_url=s3_server.endpoint_url,
        access_key_id=s3_server.access_key_id,
        secret_access_key="not-the-secret",
        region="us-east-1",
    )
    with pytest.raises(StorageError) as refused:
        wrong_key.upload_file(path, S3Location(bucket, "logs/trainer.log"))
    assert not isinstance(refused.value, StoreUnavailable)
    assert f"s3://{bucket}/logs/trainer.log" in str(refused.value)
