"""Config loading: every kind of mistake gets exit code 78 and a message naming file, line and
key; the quantities people write parse; the committed JSON Schema is current."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.host.config import HostDevice, HostMetric
from drivers.modbus.config import ModbusDevice
from gateway.config import loader
from gateway.config.handover import to_settings
from gateway.config.isolated import parse_settings, read_settings
from gateway.config.loader import config_json_schema_text, load_config, parse_config
from gateway.errors import ConfigError
from gateway.quantities import parse_duration, parse_size
from tests.harness import REPO, run_fieldgate

CASES = sorted(p for p in (Path(__file__).parent / "config_cases").iterdir() if p.is_dir())


def case_text(name: str) -> str:
    return (Path(__file__).parent / "config_cases" / name / "config.yaml").read_text()


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_bad_config_names_file_line_and_key(case: Path):
    expected = (case / "expected.txt").read_text().strip()
    result = run_fieldgate("check", str(case / "config.yaml"))
    assert result.returncode == 78, result.stderr
    assert result.stdout == ""
    assert f"{case / 'config.yaml'}:" in result.stderr
    assert expected.removeprefix("config.yaml") in result.stderr, result.stderr


def test_run_with_bad_config_exits_78_before_doing_anything(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(case_text("unknown_key"))
    result = run_fieldgate("run", "-c", str(bad))
    assert result.returncode == 78
    assert "configuration is not valid" in result.stderr


def test_unusable_buffer_path_is_reported_not_a_traceback(tmp_path: Path):
    (tmp_path / "a-file").write_text("")
    config = tmp_path / "fieldgate.yaml"
    text = case_text("unknown_key").replace("  hots: broker.local\n", "")
    config.write_text(text.replace("/tmp/fieldgate-test-buffer.db", str(tmp_path / "a-file/b.db")))
    result = run_fieldgate("run", "-c", str(config))
    assert result.returncode == 73
    assert f"cannot open the buffer {tmp_path / 'a-file/b.db'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_file_is_a_config_error(tmp_path: Path):
    result = run_fieldgate("check", str(tmp_path / "nope.yaml"))
    assert result.returncode == 78
    assert "nope.yaml: cannot read the config file: No such file or directory" in result.stderr


def test_every_mistake_is_reported_at_once():
    text = case_text("unknown_key").replace("interval: 10s", "interval: soon")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="f.yaml")
    assert len(caught.value.problems) == 2
    assert any("devices[0].interval" in p for p in caught.value.problems)


def test_example_configs_are_valid():
    for example in sorted((REPO / "examples").glob("*.yaml")):
        config = load_config(example)
        assert config.devices, example
    result = run_fieldgate("check", str(REPO / "examples" / "demo.yaml"))
    assert result.returncode == 0
    assert "OK (3 bus(es), 4 device(s))" in result.stdout


def test_values_people_write_reach_the_model():
    text = case_text("unknown_key").replace("  hots: broker.local\n", "")
    text = text.replace("interval: 10s", "interval: 1m30s")
    config = parse_config(text)
    assert config.devices[0].interval == 90.0
    assert config.buffer.max_size == 64_000_000
    device = config.devices[0]
    assert isinstance(device, ModbusDevice)
    assert device.points[0].register_type == "input"


def test_each_device_gets_the_model_of_its_bus():
    config = parse_config(case_text("modbus_typo_beside_host").replace("    unti_id: 2\n", ""))
    meter, box = config.devices
    assert isinstance(meter, ModbusDevice)
    assert isinstance(box, HostDevice)
    assert box.metrics == list(HostMetric)
    assert config.devices_on("box") == [box]


@pytest.mark.parametrize(
    ("old", "new", "starts"),
    [
        (
            "    interval: 10s\n",
            "    interval: 10s\n    unti_id: 2\n",
            "f.yaml:19: devices[0].unti_id: ",
        ),
        ("    bus: box\n", "    bus: box\n    unit_id: 2\n", "f.yaml:27: devices[1].unit_id: "),
        (
            "    bus: box\n",
            "    bus: box\n    interval: soon\n",
            "f.yaml:27: devices[1].interval: ",
        ),
        (
            "    bus: box\n",
            "    bus: box\n    metrics: [lod_1m]\n",
            "f.yaml:27: devices[1].metrics[0]: ",
        ),
        ("    bus: box\n", "    bus: bxo\n", "f.yaml:26: devices[1].bus: bus 'bxo' is not defined"),
        ("    bus: lan\n", "    bus: box\n", "f.yaml:19: devices[0].points: unknown key 'points'"),
        ("    type: host\n", "    type: hots\n", "f.yaml:14: buses[1].type: 'hots' is not one of"),
    ],
)
def test_one_mistake_among_device_kinds_is_one_line(old: str, new: str, starts: str):
    text = case_text("modbus_typo_beside_host").replace("    unti_id: 2\n", "")
    assert text.count(old) == 1
    with pytest.raises(ConfigError) as caught:
        parse_config(text.replace(old, new), source="f.yaml")
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert problems[0].startswith(starts), problems[0]
    # Nothing of pydantic's inner workings: no union tags, validator or model names.
    for internal in ("function-after", "tagged-union", "union_tag", "Device", "Bus"):
        assert internal not in problems[0]


def test_committed_schema_is_current():
    committed = (REPO / "docs" / "config.schema.json").read_text()
    assert committed == config_json_schema_text(), "run: fieldgate schema > docs/config.schema.json"
    result = run_fieldgate("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    point = schema["$defs"]["ModbusPoint"]
    assert point["additionalProperties"] is False
    assert "f32" in schema["$defs"]["ValueType"]["enum"]
    # Editors complete every kind of device: the items are one of the device models.
    device_kinds = schema["properties"]["devices"]["items"]["oneOf"]
    assert {kind["$ref"] for kind in device_kinds} == {
        "#/$defs/ModbusDevice",
        "#/$defs/HostDevice",
        "#/$defs/BleDevice",
    }
    assert "soc_temperature" in schema["$defs"]["HostMetric"]["enum"]


@given(
    parts=st.lists(
        st.tuples(st.integers(1, 999), st.sampled_from(["ms", "s", "m", "h", "d"])),
        min_size=1,
        max_size=3,
    )
)
def test_duration_sums_its_parts(parts):
    seconds = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert parse_duration(text) == pytest.approx(sum(n * seconds[u] for n, u in parts))


@given(text=st.text(max_size=12))
def test_duration_never_crashes_on_garbage(text):
    outcome: float | str
    try:
        outcome = parse_duration(text)
    except ValueError as exc:
        outcome = str(exc)
    assert (isinstance(outcome, float) and outcome > 0) or "duration" in str(outcome)


@pytest.mark.parametrize(
    ("text", "size"),
    [("512MB", 512_000_000), ("1GiB", 2**30), ("100 kB", 100_000), (4096, 4096)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0s", "-5s", "10", "ten seconds", "5 parsecs", True])
def test_bad_durations(text):
    # "10" is text without a unit: ambiguous, so refused (a bare YAML number means seconds).
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_the_readme_config_example_is_valid():
    readme = (REPO / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(example, source="README.md")
    assert {bus.type for bus in config.buses} == {"modbus_tcp", "host"}


def test_an_inline_password_is_refused_without_repeating_it():
    result = run_fieldgate("check", str(REPO / "tests/config_cases/inline_password/config.yaml"))
    assert result.returncode == 78
    assert "did you mean 'password_file'" in result.stderr
    assert "hunter2" not in result.stderr


def test_the_config_hash_is_of_what_the_config_means_and_leaves_the_password_out():
    base = "gateway: {id: g}\nmqtt: {host: b, username: u, password_file: /run/a}\n"
    base += "buses: [{name: box, type: host}]\ndevices: [{name: d, bus: box}]\n"
    spelled_out = base.replace("{id: g}", "{id: g, stop_timeout: 5s}")  # the default, written
    other_secret = base.replace("/run/a", "/run/b")
    other_meaning = base.replace("{name: d, bus: box}", "{name: d, bus: box, interval: 5s}")
    hashes = [parse_config(text).config_hash() for text in (base, spelled_out, other_secret)]
    assert len(set(hashes)) == 1
    assert hashes[0].startswith("sha256:")
    assert parse_config(other_meaning).config_hash() != hashes[0]


#: A site of identical meters with their points listed by hand (no template).
LISTED_POINTS = """gateway: {id: g}
mqtt: {host: broker}
buses: [{name: lan, type: modbus_tcp, host: 10.0.0.5}]
devices:
""" + "".join(
    f"""  - name: m{n}
    bus: lan
    unit_id: {n + 1}
    points:
      - {{name: voltage, register: input, address: 0, type: f32, unit: V}}
      - {{name: current, register: input, address: 6, type: f32, unit: A}}
"""
    for n in range(3)
)


def test_run_reads_the_yaml_in_a_child_and_gets_the_same_config(tmp_path: Path):
    for text in (LISTED_POINTS, (REPO / "examples" / "demo.yaml").read_text()):
        path = tmp_path / "fieldgate.yaml"
        path.write_text(text)
        here, apart = load_config(path), read_settings(path)
        assert apart == to_settings(here)
        assert apart.config_hash == here.config_hash()
        assert [d.name for d in apart.devices] == [d.name for d in here.devices]


def test_equal_points_of_different_devices_are_one_object(tmp_path: Path):
    path = tmp_path / "fieldgate.yaml"
    path.write_text(LISTED_POINTS)
    for config in (parse_config(LISTED_POINTS), read_settings(path)):
        points = [point for device in config.devices for point in getattr(device, "points", [])]
        assert len(points) == 6
        assert len({id(point) for point in points}) == 2


def test_a_config_read_in_a_child_has_the_same_mistakes(tmp_path: Path):
    for case in ("unknown_key", "duplicate_device", "yaml_syntax"):
        path = CASES[[p.name for p in CASES].index(case)] / "config.yaml"
        with pytest.raises(ConfigError) as here:
            load_config(path)
        with pytest.raises(ConfigError) as apart:
            read_settings(path)
        assert apart.value.problems == here.value.problems
    # A YAML timestamp is no value of any key: refused all the same.
    dated = case_text("unknown_key").replace("gateway:\n", "gateway:\n  since: 2026-01-01\n", 1)
    with pytest.raises(ConfigError) as here:
        parse_config(dated)
    with pytest.raises(ConfigError) as apart:
        parse_settings(dated)
    assert apart.value.problems == here.value.problems
    assert any("since" in problem for problem in apart.value.problems)


def test_without_a_child_the_config_is_read_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "fieldgate.yaml"
    path.write_text(LISTED_POINTS)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    assert read_settings(path) == to_settings(load_config(path))
    with pytest.raises(ConfigError) as exc:
        parse_settings(case_text("unknown_key"), source="x.yaml")
    assert exc.value.problems[0].startswith("x.yaml:6: mqtt.hots: unknown key 'hots'")


def test_the_yaml_is_composed_in_the_child_not_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = tmp_path / "fieldgate.yaml"
    path.write_text(LISTED_POINTS)
    expected = to_settings(load_config(path))

    def not_here(text: str, source: str) -> None:
        raise AssertionError("composed in the long-lived process")

    monkeypatch.setattr(loader, "_compose", not_here)
    assert read_settings(path) == expected
    with pytest.raises(ConfigError):
        parse_settings(case_text("unknown_key"))
