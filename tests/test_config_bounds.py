"""The bounds of the config's values and of the file itself, beside the cases in config_cases/
(one folder per kind of mistake): what is allowed at the edges, the warning for a buffer the
unit cannot write, and that the bounds are the protocol's and the unit's own."""

from __future__ import annotations

import configparser
import math
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.fields import TOPIC_PREFIX_MAX
from gateway.config.loader import (
    STATE_DIRECTORY,
    config_json_schema,
    parse_config,
)
from gateway.config.source import MAX_FILE_BYTES
from gateway.errors import ConfigError
from gateway.quantities import MAX_DURATION, format_duration, parse_duration, parse_size
from tests.harness import REPO
from tests.wire import dialect as wire_dialect

BASE = (
    (REPO / "tests/config_cases/unknown_key/config.yaml")
    .read_text()
    .replace("  hots: broker.local\n", "")
)


def with_lines(old: str, new: str) -> str:
    assert BASE.count(old) == 1, old
    return BASE.replace(old, new)


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="f.yaml")
    return caught.value.problems


def check(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("keepalive", "seconds"), [("1s", 1.0), ("18h12m15s", 65535.0), (65535, 65535.0)]
)
def test_keepalive_edges_are_allowed(keepalive, seconds):
    text = with_lines("  port: 1883\n", f"  port: 1883\n  keepalive: {keepalive}\n")
    assert parse_config(text).mqtt.keepalive == seconds


@pytest.mark.parametrize("keepalive", ["65536s", "999ms", 0.4])
def test_keepalive_beyond_mqtt_is_refused(keepalive):
    text = with_lines("  port: 1883\n", f"  port: 1883\n  keepalive: {keepalive}\n")
    (problem,) = problems_of(text)
    assert problem.startswith("f.yaml:6: mqtt.keepalive: ")
    assert "from 1s to 18h12m15s (65535s)" in problem


@pytest.mark.parametrize("text", [math.inf, -math.inf, math.nan, 1e300, "1" + "0" * 400 + "s"])
def test_no_duration_is_infinite_or_beyond_any_use(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_the_longest_duration_is_written_in_days():
    assert format_duration(MAX_DURATION) == "3650d"
    assert parse_duration("3650d") == MAX_DURATION


@pytest.mark.parametrize("text", ["9" * 400 + "MB", 2**63, "9999999TiB"])
def test_no_size_is_beyond_a_file(text):
    with pytest.raises(ValueError, match="larger than any file"):
        parse_size(text)


@pytest.mark.parametrize(
    "host",
    ["192.0.2.10", "2001:db8::1", "fe80::1%eth0", "broker", "a-1.example.net", "x" * 63 + ".io"],
)
def test_host_names_and_addresses_are_allowed(host):
    text = with_lines("  host: 127.0.0.1\n", f'  host: "{host}"\n')
    assert parse_config(text).mqtt.host == host


@pytest.mark.parametrize(
    "host",
    ["x" * 64 + ".io", ("a" * 63 + ".") * 4 + "io", "-broker", "a_b", "a b", "a..b", "1.2.3.256"],
)
def test_host_names_beyond_rfc_1123_are_refused(host):
    (problem,) = problems_of(with_lines("  host: 127.0.0.1\n", f'  host: "{host}"\n'))
    assert problem.startswith("f.yaml:4: mqtt.host: ")


def test_the_longest_topic_fits_mqtt_with_room_to_spare():
    # Names (gateway id, device) are at most 64 characters; the prefix at most 256; all ASCII.
    dialect = wire_dialect("p" * TOPIC_PREFIX_MAX, "g" * 64)
    longest = dialect.reading_topic("d" * 64).encode()
    assert len(longest) == 402
    assert len(longest) < 65535


def test_a_70000_character_prefix_is_reported_in_one_short_line():
    text = with_lines("  port: 1883\n", "  port: 1883\n  topic_prefix: " + "a" * 70_000 + "\n")
    (problem,) = problems_of(text)
    assert problem.startswith("f.yaml:6: mqtt.topic_prefix: ")
    assert "(70000 characters)" in problem
    assert len(problem) < 300


def test_the_schema_carries_the_bounds_for_editors():
    mqtt = config_json_schema()["$defs"]["MqttConfig"]["properties"]
    number = next(b for b in mqtt["keepalive"]["anyOf"] if b["type"] == "number")
    assert (number["minimum"], number["maximum"]) == (1.0, 65535.0)
    assert mqtt["topic_prefix"]["maxLength"] == TOPIC_PREFIX_MAX


def test_a_file_over_the_size_cap_is_a_config_error(tmp_path: Path):
    big = tmp_path / "big.yaml"
    big.write_text(BASE + "#" * MAX_FILE_BYTES)
    result = check(big)
    assert result.returncode == 78
    assert f"{big}: the file is larger than 2 MiB" in result.stderr


def test_merge_and_value_keys_are_read_as_text():
    # In YAML 1.1 `=` is a value key and `<<` a merge key; the safe loader has no constructor
    # for either and would raise. Read as text, they get the usual one line.
    text = with_lines("        unit: V\n", "        unit: =\n")
    assert parse_config(text).devices[0].model_dump()["points"][0]["unit"] == "="
    (problem,) = problems_of(with_lines("  port: 1883\n", "  port: 1883\n  <<: {}\n"))
    assert problem.startswith("f.yaml:6: mqtt.<<: unknown key '<<'")


def test_an_alias_is_still_allowed_within_the_budget():
    text = with_lines("    points:\n", "    points: &points\n") + "  - name: second-meter\n"
    text += "    bus: lan\n    points: *points\n"
    config = parse_config(text)
    assert [device.name for device in config.devices] == ["main-meter", "second-meter"]


def test_check_warns_about_a_buffer_the_unit_cannot_write(tmp_path: Path):
    config = tmp_path / "fieldgate.yaml"
    config.write_text(BASE)  # its buffer is /tmp/fieldgate-test-buffer.db
    result = check(config)
    assert result.returncode == 0, result.stderr
    assert "OK (1 bus(es), 1 device(s))" in result.stdout
    assert result.stderr == (
        f"{config}:7: warning: buffer.path: /tmp/fieldgate-test-buffer.db is outside "
        "/var/lib/fieldgate, which the systemd unit cannot write; put the buffer under "
        "/var/lib/fieldgate/\n"
    )


@pytest.mark.parametrize(
    ("path", "warned"),
    [
        ("/var/lib/fieldgate/buffer.db", False),
        ("/var/lib/fieldgate/site/buffer.db", False),
        ("/var/lib/fieldgate/../buffer.db", True),
        ("/var/lib/fieldgate-old/buffer.db", True),
        ("var/lib/fieldgate/buffer.db", False),  # relative: under the unit, from /
        ("buffer.db", True),
    ],
)
def test_only_a_buffer_under_the_state_directory_goes_unwarned(tmp_path: Path, path, warned):
    config = tmp_path / "fieldgate.yaml"
    config.write_text(BASE.replace("/tmp/fieldgate-test-buffer.db", path))
    result = check(config)
    assert result.returncode == 0, result.stderr
    assert ("warning: buffer.path" in result.stderr) == warned, result.stderr


def test_the_state_directory_is_the_units():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(REPO / "systemd" / "fieldgate.service")
    assert Path("/var/lib") / unit["Service"]["StateDirectory"] == STATE_DIRECTORY


@pytest.mark.parametrize(
    ("interval", "seconds"), [("0", 0.0), ("0s", 0.0), ("1s", 1.0), ("1d", 86400.0)]
)
def test_the_health_interval_is_a_period_or_off(interval, seconds):
    text = BASE + f"health:\n  interval: {interval}\n"
    assert parse_config(text).health.interval == seconds


@pytest.mark.parametrize("interval", ["500ms", "2d", "-1s", "off"])
def test_a_health_interval_out_of_range_is_refused_with_its_line(interval):
    text = BASE + f"health:\n  interval: {interval}\n"
    (problem,) = problems_of(text)
    assert "health.interval" in problem
