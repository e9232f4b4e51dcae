"""Fixtures that start the real parts: a Mosquitto broker, the fleet-side subscriber, and the
gateway as a child process (so that it can be killed with SIGKILL like on a real box)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.mosquitto import MosquittoBroker

from tests.harness import GatewayProcess
from tests.wire import CheckedFleet


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker() as running:
        yield running


@pytest.fixture
def fleet(broker: MosquittoBroker) -> Iterator[FleetSubscriber]:
    with CheckedFleet(broker.port) as subscriber:
        yield subscriber


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[GatewayProcess]]:
    """Gateway processes a test starts; any still running at the end are killed."""
    started: list[GatewayProcess] = []
    yield started
    for gateway in started:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()
