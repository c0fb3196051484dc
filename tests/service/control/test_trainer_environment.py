"""The server's settings reach the trainer's environment: TUNEFORGE_TRAINER_TORCH_COMPILE
turns torch.compile on in the trainer (trainer/precision.py), and it is off by default;
TUNEFORGE_TRAINER_STORE_OUTAGE_PATIENCE_SECONDS sets how long its store calls wait out an
outage."""

from __future__ import annotations

import os

import pytest
import torch

from jobstore.storage import ObjectStore
from service.server.main import build_trainer_environment
from service.settings import Settings
from trainer import precision


def _settings(monkeypatch: pytest.MonkeyPatch, **environment: str) -> Settings:
    for name in [n for n in os.environ if n.startswith("TUNEFORGE_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_torch_compile_is_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = build_trainer_environment(_settings(monkeypatch), "key", "secret")
    assert environment["TUNEFORGE_TORCH_COMPILE"] == "0"
    chosen = precision.resolve("auto", torch.device("cpu"), environ=environment)
    assert chosen.compile is False


@pytest.mark.parametrize("value", ["true", "1"])
def test_the_torch_compile_setting_reaches_the_trainer(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    settings = _settings(monkeypatch, TUNEFORGE_TRAINER_TORCH_COMPILE=value)
    environment = build_trainer_environment(settings, "key", "secret")
    assert environment["TUNEFORGE_TORCH_COMPILE"] == "1"
    chosen = precision.resolve("fp32", torch.device("cpu"), environ=environment)
    assert chosen.compile is True


def test_a_bad_torch_compile_value_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="trainer_torch_compile"):
        _settings(monkeypatch, TUNEFORGE_TRAINER_TORCH_COMPILE="sometimes")


def test_the_store_outage_patience_reaches_the_trainers_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = build_trainer_environment(_settings(monkeypatch), "key", "secret")
    assert ObjectStore.from_environment(default).outage_patience_seconds == 120.0
    settings = _settings(monkeypatch, TUNEFORGE_TRAINER_STORE_OUTAGE_PATIENCE_SECONDS="600")
    environment = build_trainer_environment(settings, "key", "secret")
    assert ObjectStore.from_environment(environment).outage_patience_seconds == 600.0
    # A dry run, which someone waits on, does not wait out an outage.
    assert (
        ObjectStore.from_environment(environment, outage_patience_seconds=0).outage_patience_seconds
        == 0
    )
