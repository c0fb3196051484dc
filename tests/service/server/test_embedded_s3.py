"""The embedded store's start-up retry: a start that failed because another process took
one of SeaweedFS's internal ports (picked free just before) is tried again with others;
one that failed on the caller's own S3 port, or for another reason, is not."""

from __future__ import annotations

from pathlib import Path

from service.server.embedded_s3 import EmbeddedS3

FILER_TAKEN = (
    "F1205 13:11:52.737946 filer.go:454 Filer listener error: "
    "listen tcp 127.0.0.1:60827: bind: address already in use\n"
)


def _store(tmp_path: Path, log: str) -> EmbeddedS3:
    store = EmbeddedS3(
        tmp_path / "data",
        port=8333,
        access_key_id=None,
        secret_access_key=None,
        log_path=tmp_path / "weed.log",
    )
    store.log_path.write_text("an earlier start: listen tcp 127.0.0.1:1: address already in use\n")
    with open(store.log_path, "a") as handle:
        handle.write(log)
    return store


def test_an_internal_port_taken_at_start_is_tried_again(tmp_path: Path) -> None:
    store = _store(tmp_path, FILER_TAKEN)
    offset = len("an earlier start: listen tcp 127.0.0.1:1: address already in use\n")
    assert store._internal_port_was_taken(offset)


def test_the_callers_port_taken_or_another_failure_is_not(tmp_path: Path) -> None:
    offset = len("an earlier start: listen tcp 127.0.0.1:1: address already in use\n")
    s3_taken = "listen tcp 127.0.0.1:8333: bind: address already in use\n"
    assert not _store(tmp_path, s3_taken)._internal_port_was_taken(offset)
    assert not _store(tmp_path, "panic: no space left on device\n")._internal_port_was_taken(offset)
