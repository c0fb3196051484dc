"""The fault tests run with warm trainers, the service's default: a trainer killed,
replicas racing or the store gone must end the same whether a job started in a new process
or in a spare (service/control/launch/warm_pool.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def warm_trainers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_WARM_TRAINERS", "1")  # read by tests/servers.py ApiServer
