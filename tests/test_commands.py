"""Remote commands against a real broker and a simulated meter: each command, each bad command
(an error result, nothing written, nothing crashed), and reloads that fail validation, that
succeed, and that are rolled back because the new config cannot reach its broker."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import paho.mqtt.publish
import pytest
from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.modbus_server import RegisterBank, RunningServer, start_in_thread
from fieldgate_sim.mosquitto import MosquittoBroker, free_port

from gateway.commands import RecentIds
from gateway.config.loader import parse_config
from gateway.errors import ConfigError
from tests.harness import GatewayProcess, gateway_yaml, start_gateway
from tests.wire import CheckedFleet

COMMANDS = "fieldgate/gw-test/commands"
RESULTS = f"{COMMANDS}/result"
STATUS = "fieldgate/gw-test/status"
#: setpoint: holding register 10, a u16 in tenths, writable within 0..50.
SETPOINT = 10
MODE = 11

DEVICES = """\
- name: meter
  bus: lan
  interval: 1s
  points:
    - {name: voltage, register: input, address: 0, type: u16, scale: 0.1, unit: V}
    - {name: setpoint, address: 10, type: u16, scale: 0.1, unit: A, writable: true, min: 0, max: 50}
    - {name: mode, address: 11, type: u16}
"""


def config_text(broker_port: int, meter_port: int, tmp_path: Path, *, extra: str = "") -> str:
    text = gateway_yaml(
        broker_port,
        tmp_path / "buffer.db",
        buses=f"- {{name: lan, type: modbus_tcp, host: 127.0.0.1, port: {meter_port}}}\n",
        devices=DEVICES,
    )
    return text.replace(
        "buffer:\n", "commands:\n  enabled: true\n" + textwrap.dedent(extra) + "buffer:\n", 1
    )


def send(broker: MosquittoBroker, body: object, *, retain: bool = False) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    paho.mqtt.publish.single(
        COMMANDS, payload, qos=1, retain=retain, hostname="127.0.0.1", port=broker.port
    )


def results(fleet: FleetSubscriber, command_id: str | None) -> list[dict[str, Any]]:
    documents = [m.json() for m in fleet.messages(lambda t: t == RESULTS)]
    return [d for d in documents if d["id"] == command_id]


def ask(
    broker: MosquittoBroker,
    fleet: CheckedFleet,
    body: dict[str, Any],
    *,
    count: int = 1,
    timeout: float = 20,
) -> dict[str, Any]:
    """Send a command and wait for its ``count``-th result; returns that result."""
    send(broker, body)
    assert fleet.wait_for(lambda f: len(results(f, body["id"])) >= count, timeout=timeout), body
    return results(fleet, body["id"])[count - 1]


def error_code(result: dict[str, Any]) -> str:
    assert result["ok"] is False, result
    code: str = result["error"]["code"]
    return code


def birth_config(fleet: FleetSubscriber) -> str:
    births = [m.json() for m in fleet.messages(lambda t: t == STATUS)]
    config: str = [b for b in births if b["state"] == "online"][-1]["config"]
    return config


@pytest.fixture
def meter() -> Any:
    bank = RegisterBank(1, holding=[0] * 10 + [120, 3], input=[2301])
    with start_in_thread([bank]) as running:
        yield running


def register(meter: RunningServer, address: int) -> int:
    return meter.get_registers(1, "holding", address, 1)[0]


def test_commands_do_what_they_say_and_refuse_what_they_must(
    broker: MosquittoBroker,
    fleet: CheckedFleet,
    gateways: list[GatewayProcess],
    meter: RunningServer,
    tmp_path: Path,
):
    # Retained on the broker: the gateway gets it when it subscribes (MQTT flags it retained).
    send(broker, {"id": "kept", "command": "ping"}, retain=True)
    gateway = start_gateway(gateways, tmp_path, config_text(broker.port, meter.port, tmp_path))
    assert fleet.wait_for(lambda f: bool(results(f, "kept")), timeout=20), gateway.log()
    paho.mqtt.publish.single(COMMANDS, b"", retain=True, hostname="127.0.0.1", port=broker.port)
    assert fleet.wait_for(lambda f: bool(f.readings()), timeout=20), gateway.log()

    assert ask(broker, fleet, {"id": "p1", "command": "ping"})["result"] == {"pong": True}
    stats = ask(broker, fleet, {"id": "b1", "command": "buffer-stats"})["result"]
    assert set(stats) == {"waiting", "oldest_ts", "newest_seq", "dropped", "quarantined"}
    now = ask(broker, fleet, {"id": "r1", "command": "read-now", "device": "meter"})["result"]
    assert now["values"] == {"voltage": 230.1, "setpoint": 12.0, "mode": 3}
    assert now["units"]["setpoint"] == "A"

    # A write the config allows: the meter's register changes, and the value is read back.
    written = ask(
        broker,
        fleet,
        {"id": "w1", "command": "write", "device": "meter", "point": "setpoint", "value": 23.4},
    )
    assert written["ok"] is True, written
    assert written["result"]["read_back"] == 23.4
    assert register(meter, SETPOINT) == 234

    # Every bad command: an error result naming what is wrong, nothing written.
    bad: dict[str, dict[str, Any]] = {
        "x1": {"command": "write", "device": "meter", "point": "mode", "value": 1},
        "x2": {"command": "write", "device": "meter", "point": "setpoint", "value": 50.5},
        "x3": {"command": "write", "device": "meter", "point": "setpoint", "value": "12"},
        "x4": {"command": "reboot"},
        "x5": {"command": "ping", "gateway": "another-gateway"},
        "x6": {"command": "read-now", "device": "nowhere"},
        "x7": {"command": "write", "device": "meter", "point": "voltage", "value": 1},
    }
    expected = {
        "x1": "not_writable",
        "x2": "out_of_limits",
        "x3": "malformed",
        "x4": "unknown_command",
        "x5": "wrong_gateway",
        "x6": "unknown_device",
        "x7": "not_writable",
    }
    for command_id, body in bad.items():
        assert error_code(ask(broker, fleet, {"id": command_id, **body})) == expected[command_id]
    # A replay of a command already done: refused, not written twice.
    meter.set_registers(1, "holding", SETPOINT, [99])
    replay = {"id": "w1", "command": "write", "device": "meter", "point": "setpoint", "value": 1}
    assert error_code(ask(broker, fleet, replay, count=2)) == "replayed"
    assert (register(meter, SETPOINT), register(meter, MODE)) == (99, 3)
    # Not JSON at all, and JSON without an id: answered under id null.
    send(broker, b"{not json")
    assert fleet.wait_for(lambda f: len(results(f, None)) >= 1, timeout=20)
    send(broker, {"command": "ping"})
    assert fleet.wait_for(lambda f: len(results(f, None)) >= 2, timeout=20)
    assert {error_code(r) for r in results(fleet, None)} == {"malformed"}
    # The retained command left before the start: refused, it would run on every connection.
    assert error_code(results(fleet, "kept")[0]) == "retained"

    # Still alive and well after all that; it never subscribed to anything but its own topic.
    assert ask(broker, fleet, {"id": "p2", "command": "ping"})["ok"] is True
    assert set(broker.subscriptions("fieldgate-gw-test")) == {COMMANDS}
    assert gateway.process is not None
    assert gateway.process.poll() is None
    assert gateway.stop() == 0
    assert "Traceback" not in gateway.log()


def test_reloads_by_command_validate_switch_and_roll_back(
    broker: MosquittoBroker,
    fleet: CheckedFleet,
    gateways: list[GatewayProcess],
    meter: RunningServer,
    tmp_path: Path,
):
    first = config_text(broker.port, meter.port, tmp_path, extra="")
    gateway = start_gateway(gateways, tmp_path, first)
    assert fleet.wait_for(lambda f: bool(f.readings()), timeout=20), gateway.log()
    original = birth_config(fleet)
    assert original == parse_config(first).config_hash()

    # A broken config: refused with the reasons, the running config stays.
    broken = first.replace("interval: 1s", "interval: soon")
    refused = ask(broker, fleet, {"id": "bad", "command": "reload", "config": broken})
    assert error_code(refused) == "invalid_config"
    assert "devices[0].interval" in refused["error"]["message"]
    assert ask(broker, fleet, {"id": "alive", "command": "ping"})["ok"] is True

    # A good config: accepted ("reloading"), then reported "reloaded" by the new config once
    # it reached the broker, whose birth carries the new hash.
    second = first.replace("interval: 1s", "interval: 2s")
    accepted = ask(broker, fleet, {"id": "good", "command": "reload", "config": second})
    assert accepted["result"]["state"] == "reloading"
    assert fleet.wait_for(lambda f: len(results(f, "good")) >= 2, timeout=20)
    assert results(fleet, "good")[1]["result"] == {
        "state": "reloaded",
        "config": parse_config(second).config_hash(),
    }
    assert fleet.wait_for(lambda f: birth_config(f) == accepted["result"]["config"], timeout=10)

    # A config whose broker cannot be reached: undone after gateway.reload_rollback, and the
    # command hears it under its id from the config that runs again.
    dead_port = free_port()
    unreachable = second.replace(f"port: {broker.port}", f"port: {dead_port}").replace(
        "stop_timeout: 10s", "stop_timeout: 10s\n  reload_rollback: 2s"
    )
    assert ask(broker, fleet, {"id": "far", "command": "reload", "config": unreachable})["ok"]
    assert fleet.wait_for(lambda f: len(results(f, "far")) >= 2, timeout=30), gateway.log()
    rolled = results(fleet, "far")[1]
    assert error_code(rolled) == "rolled_back"
    assert f"127.0.0.1:{dead_port}" in rolled["error"]["message"]
    assert birth_config(fleet) == parse_config(second).config_hash()
    assert ask(broker, fleet, {"id": "after", "command": "ping"})["ok"] is True

    # Without a config in the body: the file on disk, read again (the first config).
    assert ask(broker, fleet, {"id": "disk", "command": "reload"})["ok"] is True
    assert fleet.wait_for(lambda f: len(results(f, "disk")) >= 2, timeout=20), gateway.log()
    assert results(fleet, "disk")[1]["result"]["config"] == original
    assert gateway.stop() == 0
    assert "reload undone" in gateway.log()


def test_commands_are_off_unless_enabled_and_their_bounds_are_checked():
    base = "gateway: {id: g}\nmqtt: {host: b}\nbuses: [{name: h, type: host}]\n"
    base += "devices: [{name: d, bus: h}]\n"
    assert parse_config(base).commands.enabled is False
    with pytest.raises(ConfigError, match=r"commands\.remember"):
        parse_config(base + "commands: {enabled: true, remember: 1}\n", source="f.yaml")


def test_a_writable_point_needs_its_limits_and_a_table_that_can_be_written():
    base = "gateway: {id: g}\nmqtt: {host: b}\nbuses: [{name: l, type: modbus_tcp, host: m}]\n"
    for point, problem in (
        ("{name: p, address: 0, type: u16, writable: true}", "needs both limits"),
        ("{name: p, address: 0, type: u16, min: 0, max: 1}", "add writable: true"),
        (
            "{name: p, register: input, address: 0, type: u16, writable: true, min: 0, max: 1}",
            "only holding registers and coils",
        ),
        ("{name: p, address: 0, type: u16, writable: true, min: 2, max: 1}", "above max"),
    ):
        with pytest.raises(ConfigError, match=problem):
            parse_config(base + f"devices: [{{name: d, bus: l, points: [{point}]}}]\n")


def test_recent_ids_refuse_a_replay_and_forget_the_oldest():
    recent = RecentIds(10)
    assert not recent.seen("a")
    assert recent.seen("a")
    for index in range(10):
        recent.seen(f"n{index}")
    assert not recent.seen("a")  # forgotten: only the last ten are kept
