"""The Prometheus endpoint, scraped over HTTP from a gateway running in-process with devices of
the test's own: what a fleet's Prometheus would collect, parsed by prometheus-client's parser."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fieldgate_sim.modbus_server import Faults, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker, free_port
from fieldgate_sim.template_meter import TemplateMeter
from prometheus_client.parser import text_string_to_metric_families

from gateway.clock import Clock, SystemClock, epoch_ms
from gateway.config.loader import parse_config
from gateway.errors import DeviceTimeout
from gateway.health import HealthRegistry
from gateway.readings import PointValue, Reading
from gateway.service import run_gateway
from gateway.shutdown import ShutdownRequest
from tests.harness import REPO, settings_from_text
from tests.own_drivers import OwnBus, own_drivers
from tests.wire import CheckedFleet


class Meter:
    def __init__(self, name: str, clock: Clock) -> None:
        self._name, self._clock = name, clock

    @property
    def name(self) -> str:
        return self._name

    async def read(self) -> Reading:
        if self._name == "dead":
            raise DeviceTimeout("no answer within the timeout")
        return Reading(self._name, epoch_ms(self._clock), (PointValue("v", 1.0),))


def scrape(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def health_says_alive_polled(fleet: CheckedFleet) -> bool:
    found = fleet.messages(lambda t: t == "fieldgate/gw-metrics/health")
    return bool(found) and found[-1].json()["devices"]["alive"]["polls_ok"] >= 1


async def test_metrics_show_devices_buffer_and_uplink_and_the_health_message_too(
    broker: MosquittoBroker, fleet: CheckedFleet, tmp_path: Path
):
    port = free_port()
    config = settings_from_text(
        "gateway: {id: gw-metrics, stop_timeout: 5s}\n"
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_max: 1s}}\n"
        f"buffer: {{path: {tmp_path / 'b.db'}}}\n"
        f"metrics: {{port: {port}}}\n"
        "health: {interval: 1s}\n"
        "buses: [{name: box, type: host}]\n"
        "devices: [{name: alive, bus: box, interval: 100ms}, "
        "{name: dead, bus: box, interval: 100ms}]\n"
    )

    def open_bus(_config: Any, devices: Sequence[Any], clock: Clock) -> OwnBus:
        return OwnBus([Meter(d.name, clock) for d in devices])

    health = HealthRegistry()
    shutdown = ShutdownRequest()
    run = asyncio.create_task(
        run_gateway(config, shutdown, SystemClock(), health, drivers=own_drivers(open_bus))
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async with asyncio.timeout(60):
            while True:
                assert not run.done()
                try:
                    status, text = await asyncio.to_thread(scrape, url)
                except OSError:  # not listening yet
                    status, text = 0, ""
                if (
                    status == 200
                    and health.devices["alive"].polls_ok >= 3
                    and health.uplink.up
                    and health_says_alive_polled(fleet)
                ):
                    status, text = await asyncio.to_thread(scrape, url)
                    break
                await asyncio.sleep(0.1)
        missing, _ = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/nothing")
    finally:
        shutdown.request()
        async with asyncio.timeout(30):
            await run
    assert missing == 404
    found = samples(text)
    assert found[("fieldgate_device_up", (("device", "alive"),))] == 1.0
    assert found[("fieldgate_device_up", (("device", "dead"),))] == 0.0
    assert found[("fieldgate_device_polls_total", (("device", "alive"), ("outcome", "ok")))] >= 3
    assert found[("fieldgate_device_polls_total", (("device", "dead"), ("outcome", "failed")))] >= 1
    assert ("fieldgate_device_last_success_timestamp_seconds", (("device", "dead"),)) not in found
    assert found[("fieldgate_part_up", (("part", "uplink"),))] == 1.0
    assert found[("fieldgate_readings_stored_total", ())] >= 3
    assert ("fieldgate_buffer_rows_waiting", ()) in found
    # Publish latency (a histogram: cumulative buckets, +Inf = count) and reconnects.
    acknowledged = found[("fieldgate_uplink_publish_latency_seconds_count", ())]
    assert acknowledged >= 1
    assert found[("fieldgate_uplink_publish_latency_seconds_bucket", (("le", "+Inf"),))] == (
        acknowledged
    )
    assert found[("fieldgate_uplink_reconnects_total", ())] == 0
    # The health message (validated against docs/health.schema.json on arrival) says the same.
    document = fleet.messages(lambda t: t == "fieldgate/gw-metrics/health")[-1].json()
    assert document["devices"]["dead"]["up"] is False
    assert document["devices"]["dead"]["polls_failed"] >= 1
    assert "no answer" in document["devices"]["dead"]["error"]
    assert document["devices"]["alive"]["last_success"] is not None
    assert document["buffer"]["waiting"] is not None
    assert document["uplink"]["reconnects"] == 0


def test_metrics_listen_on_localhost_by_default():
    config = parse_config(
        "gateway: {id: g}\nmqtt: {host: b.example}\nmetrics: {}\n"
        "buses: [{name: box, type: host}]\ndevices: [{name: d, bus: box}]\n"
    )
    assert config.metrics is not None
    assert config.metrics.listen == "127.0.0.1"


async def test_metrics_count_requests_timeouts_and_errors_per_bus_and_unit(
    broker: MosquittoBroker, tmp_path: Path
):
    # A real Modbus TCP line (hw-sim) with a healthy meter, a silent one and one answering
    # garbage, read by the real driver through the service: the line's and each unit's counters.
    meters = [TemplateMeter(unit, "eastron-sdm120") for unit in (1, 2, 3)]
    with start_in_thread(meters) as server:
        server.set_faults(2, Faults(silent=True))
        server.set_faults(3, Faults(garbage=True))
        port = free_port()
        config = settings_from_text(
            "gateway: {id: gw-metrics, stop_timeout: 5s}\n"
            f"mqtt: {{host: 127.0.0.1, port: {broker.port}, reconnect_max: 1s}}\n"
            f"buffer: {{path: {tmp_path / 'b.db'}}}\n"
            f"metrics: {{port: {port}}}\n"
            "buses: [{name: lan, type: modbus_tcp, host: 127.0.0.1, "
            f"port: {server.port}, timeout: 100ms}}]\n"
            "devices:\n"
            + "".join(
                f"- {{name: m{u}, bus: lan, unit_id: {u}, interval: 200ms, "
                "template: eastron-sdm120}\n"
                for u in (1, 2, 3)
            )
        )
        health = HealthRegistry()
        shutdown = ShutdownRequest()
        run = asyncio.create_task(run_gateway(config, shutdown, SystemClock(), health))
        url = f"http://127.0.0.1:{port}/metrics"

        def enough() -> bool:
            devices = health.devices
            return (
                devices["m1"].polls_ok >= 3
                and devices["m2"].polls_failed >= 1
                and devices["m3"].polls_failed >= 1
            )

        try:
            async with asyncio.timeout(60):
                while True:
                    assert not run.done()
                    try:
                        status, text = await asyncio.to_thread(scrape, url)
                    except OSError:  # not listening yet
                        status = 0
                    if status == 200 and enough():
                        status, text = await asyncio.to_thread(scrape, url)
                        break
                    await asyncio.sleep(0.1)
        finally:
            shutdown.request()
            async with asyncio.timeout(30):
                await run
    found = samples(text)

    def unit(name: str, u: int) -> float:
        return found[(name, (("bus", "lan"), ("unit", str(u))))]

    assert found[("fieldgate_bus_requests_total", (("bus", "lan"),))] >= 5
    assert found[("fieldgate_bus_timeouts_total", (("bus", "lan"),))] >= 2
    assert found[("fieldgate_bus_errors_total", (("bus", "lan"), ("kind", "malformed")))] >= 1
    assert found[("fieldgate_bus_errors_total", (("bus", "lan"), ("kind", "crc")))] == 0
    assert unit("fieldgate_bus_unit_requests_total", 1) >= 3
    assert unit("fieldgate_bus_unit_timeouts_total", 1) == 0
    assert unit("fieldgate_bus_unit_errors_total", 1) == 0
    assert unit("fieldgate_bus_unit_breaker_open", 1) == 0
    # The silent unit: asked, retried once, then backed off (its breaker shows in the gauge).
    assert unit("fieldgate_bus_unit_timeouts_total", 2) >= 2
    assert unit("fieldgate_bus_unit_errors_total", 2) == 0
    assert ("fieldgate_bus_unit_breaker_open", (("bus", "lan"), ("unit", "2"))) in found
    assert unit("fieldgate_bus_unit_errors_total", 3) >= 1
    assert unit("fieldgate_bus_unit_timeouts_total", 3) == 0
    assert health.buses["lan"].counts.slaves[1].breaker == "closed"


def test_a_gateway_without_a_metrics_section_never_imports_prometheus_client():
    # prometheus-client and the HTTP modules it pulls in are RSS that a gateway without a
    # `metrics:` section would carry for its life: `run` imports them only for that section.
    probe = (
        "import sys; from pathlib import Path; import gateway.cli, gateway.service; "
        "from gateway.config.loader import load_config; "
        "config = load_config(Path('examples/demo.yaml')); assert config.metrics is None; "
        "print('prometheus_client' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "False"
