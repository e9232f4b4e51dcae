"""Whatever ``fieldgate check`` accepts, ``fieldgate run`` runs; whatever it rejects exits 78.

Configs are generated from the published JSON Schema (``fieldgate schema``), some with hostile
YAML values put in (``.inf``, ``.nan``, a NUL, 300 characters), and dumped as YAML. In
process, many of them: the loader returns a config or raises :class:`ConfigError` with lines in
the ``file:line: key: message`` format, never anything else, and every accepted value is within
what the libraries and the OS behind ``run`` take. As child processes, a few: accepted configs
start ``fieldgate run`` and stop on SIGTERM with exit 0 and no traceback; rejected ones exit 78.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config.loader import config_json_schema, parse_config
from gateway.config.model import GatewayConfig
from gateway.errors import ConfigError
from gateway.quantities import DURATION_PATTERN, SIZE_PATTERN
from gateway.scheduler import next_slot
from tests.harness import REPO, GatewayProcess
from tests.schema_strategy import from_schema
from tests.wire import dialect as wire_dialect

SCHEMA = config_json_schema()
DEFS: dict[str, Any] = SCHEMA["$defs"]

#: Durations and sizes as people write them. What the patterns generate is mostly out of range
#: (``07.3m0ms51d``); a config has a dozen durations, so with those alone none is accepted.
WRITTEN = {
    DURATION_PATTERN: st.one_of(
        st.integers(1, 59).map("{}s".format), st.sampled_from(["250ms", "500ms"])
    ),
    SIZE_PATTERN: st.integers(1, 999).map("{}MB".format),
}
#: Values valid against the published schema: half of them with durations and sizes as
#: people write them, half with whatever the patterns allow.
SCHEMA_VALID = from_schema(SCHEMA) | from_schema(SCHEMA, written=WRITTEN)

#: Values that YAML can hold and JSON cannot, and the ones that crashed `run` before.
HOSTILE = st.sampled_from(
    [
        math.inf,
        -math.inf,
        math.nan,
        1e300,
        "1" + "0" * 400 + "s",
        "\0",
        "a\0b",
        "x" * 300,  # over every length bound (a topic prefix: 256)
        "a" * 64 + ".example.net",
        "$SYS",
        "a/+/#",
        "",
        -1,
        2**64,
        True,
        None,
    ]
)

SOURCE = "generated.yaml"
PROBLEM = re.compile(rf"^{re.escape(SOURCE)}(:\d+)?: \S")


def _fits(device: dict[str, Any], model: str) -> bool:
    return set(device) <= set(DEFS[model]["properties"])


#: A point that every rule beyond the schema allows (a u16 in the holding table).
_PLAIN_POINT = {"name": "p", "register": "holding", "address": 0, "type": "u16"}


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """Configs valid against the schema. Half of them are also made to obey the rules the
    schema cannot say (unique names, a device naming a bus of its kind, a Modbus device with
    points, a password with a username): random values almost never do, and the property
    needs accepted configs as much as rejected ones."""
    config: dict[str, Any] = draw(SCHEMA_VALID)
    if draw(st.booleans()):
        _obey_rules_across_keys(config)
    return config


def _obey_rules_across_keys(config: dict[str, Any]) -> None:
    for section in ("buses", "devices"):
        for index, item in enumerate(config[section]):
            item["name"] = f"{item['name'][:50]}-{index}"
    host_buses = [bus["name"] for bus in config["buses"] if bus["type"] == "host"]
    modbus_buses = [bus["name"] for bus in config["buses"] if bus["type"].startswith("modbus")]
    for index, device in enumerate(config["devices"]):
        if host_buses and _fits(device, "HostDevice"):
            device["bus"] = host_buses[0]
        elif modbus_buses and _fits(device, "ModbusDevice"):
            device["bus"] = modbus_buses[0]
            # Templates are the Modbus driver's data; points are what the schema describes.
            device.pop("template", None)
            device["points"] = device.get("points") or [dict(_PLAIN_POINT)]
        elif modbus_buses or host_buses:
            # Keys of no kind that has a bus here (a BLE sensor's, with no BLE bus): the
            # plainest device of a kind that has one.
            config["devices"][index] = {"name": device["name"]} | (
                {"bus": modbus_buses[0], "points": [dict(_PLAIN_POINT)]}
                if modbus_buses
                else {"bus": host_buses[0]}
            )
    # Durations narrower than the schema's pattern can say (keepalive at least 1s, and so on):
    # their defaults.
    for section, key in _BOUNDED_DURATIONS:
        if isinstance(config.get(section), dict):
            config[section].pop(key, None)
    mqtt_section = config["mqtt"]
    if mqtt_section.get("password_file") and mqtt_section.get("password_credential"):
        del mqtt_section["password_file"]
    if (mqtt_section.get("password_file") or mqtt_section.get("password_credential")) and not (
        mqtt_section.get("username")
    ):
        mqtt_section["username"] = "fieldgate"
    tls = mqtt_section.get("tls")
    if tls and (tls.get("cert_file") is None) != (tls.get("key_file") is None):
        tls.pop("cert_file", None)
        tls.pop("key_file", None)


#: Durations whose bounds are narrower than every duration's (see DurationBounds).
_BOUNDED_DURATIONS = (
    ("gateway", "reload_rollback"),
    ("mqtt", "keepalive"),
    ("health", "interval"),
    ("buffer", "commit_delay"),
)


@st.composite
def with_hostile_values(draw: st.DrawFn, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with up to three of its values replaced by :data:`HOSTILE` ones."""
    config = copy.deepcopy(config)
    leaves = _leaves(config)
    for _ in range(draw(st.integers(0, min(3, len(leaves))))):
        holder, key = draw(st.sampled_from(leaves))
        holder[key] = draw(HOSTILE)
    return config


def _leaves(node: Any) -> list[tuple[Any, Any]]:
    items = node.items() if isinstance(node, dict) else enumerate(node)
    found: list[tuple[Any, Any]] = []
    for key, value in items:
        if isinstance(value, dict | list) and value:
            found += _leaves(value)
        else:
            found.append((node, key))
    return found


def _dump(config: dict[str, Any]) -> str:
    # allow_unicode=False: every character survives as an escape, a NUL included.
    return yaml.safe_dump(config, sort_keys=False, width=10**6)


def _outcome(text: str) -> GatewayConfig | ConfigError:
    try:
        return parse_config(text, source=SOURCE)
    except ConfigError as exc:
        return exc


def assert_within_what_run_takes(config: GatewayConfig) -> None:
    """What the libraries and the OS behind `run` refuse, asked of them directly where they
    can be asked without a network: an accepted config never gets that far."""
    for host in [config.mqtt.host] + [getattr(bus, "host", "") for bus in config.buses]:
        # What getaddrinfo does to a name first; a label over 63 characters fails here.
        host.encode("idna")
    if config.metrics is not None:
        # An address to bind: numeric, so no lookup (and no network) is needed to check it.
        socket.getaddrinfo(config.metrics.listen, config.metrics.port, flags=socket.AI_NUMERICHOST)
    # paho validates topics and the client id when a message is queued, before any connection.
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=config.mqtt.client_id or f"fieldgate-{config.gateway.id}",
    )
    dialect = wire_dialect(config.mqtt.topic_prefix, config.gateway.id)
    will = dialect.will()
    client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    for device in config.devices:
        topic = dialect.reading_topic(device.name)
        client.publish(topic, b"{}", qos=1)
        assert not topic.startswith("$"), "the broker keeps $ topics for itself"
    # The session rounds the keepalive to whole seconds; MQTT sends it in 16 bits, 0 is off.
    assert 1 <= round(config.mqtt.keepalive) <= 65535
    durations = [
        config.gateway.stop_timeout,
        config.mqtt.keepalive,
        config.mqtt.reconnect_max,
        config.buffer.max_age,
        *(device.interval for device in config.devices),
        *(
            getattr(bus, name)
            for bus in config.buses
            for name in ("timeout", "reconnect_max", "slave_backoff_max")
            if hasattr(bus, name)
        ),
    ]
    for seconds in durations:
        assert math.isfinite(seconds)
        assert 0 < seconds < threading.TIMEOUT_MAX
    now = 1.8e9  # a wall-clock time in 2027
    for device in config.devices:
        assert now < next_slot(now, device.interval) <= now + device.interval + 1e-3
    assert int(config.buffer.max_age * 1000) > 0
    for path in [config.buffer.path] + [getattr(d, "filesystem", Path()) for d in config.devices]:
        encoded = os.fsencode(path)
        assert b"\0" not in encoded
        assert len(encoded) < 4096


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs().flatmap(with_hostile_values))
def test_every_generated_config_is_accepted_runnable_or_rejected_with_lines(config):
    outcome = _outcome(_dump(config))
    event("rejected" if isinstance(outcome, ConfigError) else "accepted")
    if isinstance(outcome, ConfigError):
        assert outcome.problems
        for problem in outcome.problems:
            assert PROBLEM.match(problem), problem
            assert "\n" not in problem
            assert len(problem) < 2000, problem[:200]
    else:
        assert_within_what_run_takes(outcome)


def _obeying(config: dict[str, Any]) -> dict[str, Any]:
    _obey_rules_across_keys(config)
    return config


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(config=SCHEMA_VALID.map(_obeying))
def test_the_config_hash_is_of_the_whole_config_as_sorted_json(config):
    # config_hash writes the JSON a section and a device at a time (one tree of the whole
    # config was the start's high-water mark of memory): the same text as dumping it whole.
    outcome = _outcome(_dump(config))
    assume(isinstance(outcome, GatewayConfig))
    assert isinstance(outcome, GatewayConfig)  # for mypy: assume() does not narrow
    whole = outcome.model_dump(
        mode="json", exclude={"mqtt": {"password_file", "password_credential"}}
    )
    text = json.dumps(whole, sort_keys=True, separators=(",", ":"))
    assert outcome.config_hash() == "sha256:" + hashlib.sha256(text.encode()).hexdigest()


#: Pieces of YAML syntax: anchors, aliases, tags, flow and block collections, specials.
_YAML_PIECES = [*":-[]{}&*!|>'\"%@`#,? \n\t", "a", "1", ".inf", "!!", "&a ", "*a", "<<", "\\0"]


@settings(max_examples=200, deadline=None)
@given(text=st.lists(st.sampled_from(_YAML_PIECES), max_size=80).map("".join))
def test_any_text_is_a_config_or_a_config_error(text):
    outcome = _outcome(text)
    assert isinstance(outcome, GatewayConfig | ConfigError)


def _closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _runnable_here(config: dict[str, Any], directory: Path) -> dict[str, Any]:
    """``config`` pointed at this machine: the broker and every bus host at 127.0.0.1 on a
    closed port (no DNS, no network), the buffer into ``directory``, a short stop bound."""
    config = copy.deepcopy(config)
    # A section a hostile value replaced stays as it is: the config is then rejected.
    sections = {name: config.get(name, {}) for name in ("gateway", "mqtt", "buffer")}
    if all(isinstance(section, dict) for section in sections.values()):
        sections["gateway"]["stop_timeout"] = "3s"
        sections["mqtt"].update(host="127.0.0.1", port=_closed_port())
        config["buffer"] = {**sections["buffer"], "path": str(directory / "buffer.db")}
    for bus in config["buses"] if isinstance(config["buses"], list) else []:
        if isinstance(bus, dict) and "host" in bus:
            bus["host"] = "127.0.0.1"
    return config


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # A child process per example makes shrinking take minutes; the in-process property
    # above shrinks, and a failure here reports its config as generated.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(config=configs().flatmap(with_hostile_values))
def test_accepted_configs_start_and_stop_cleanly(tmp_path_factory, config):
    directory = tmp_path_factory.mktemp("run")
    text = _dump(_runnable_here(config, directory))
    assume(isinstance(_outcome(text), GatewayConfig))
    config_path = directory / "fieldgate.yaml"
    config_path.write_text(text)
    gateway = GatewayProcess(config_path, directory / "gateway.log")
    gateway.start()
    try:
        started = gateway.wait_for_log("fieldgate running", timeout=30)
        assert started, gateway.log()
        time.sleep(1)  # let the pollers and the uplink run a little before the stop
        code = gateway.stop(timeout=15)
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()
    log = gateway.log()
    assert code == 0, log
    assert "Traceback" not in log, log


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # A child process per example makes shrinking take minutes; the in-process property
    # above shrinks, and a failure here reports its config as generated.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(config=configs().flatmap(with_hostile_values))
def test_rejected_configs_exit_78(tmp_path_factory, config):
    text = _dump(config)
    assume(isinstance(_outcome(text), ConfigError))
    config_path = tmp_path_factory.mktemp("check") / "fieldgate.yaml"
    config_path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(config_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert result.returncode == 78, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{config_path}: configuration is not valid" in result.stderr
