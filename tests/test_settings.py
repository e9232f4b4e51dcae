"""The running gateway holds settings, never config models: every model has its settings twin,
the twin carries every validated value, and a running gateway imports neither pydantic nor YAML."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from drivers.catalog import BusConfig
from drivers.factories import DRIVERS
from gateway.config.fields import StrictModel
from gateway.config.handover import settings_tree, to_settings
from gateway.config.loader import load_config, parse_config
from gateway.config.model import GatewayConfig
from gateway.settings import build_settings, settings_from_tree
from tests.harness import REPO


def _models(annotation: object, found: set[type[StrictModel]]) -> None:
    if isinstance(annotation, type) and issubclass(annotation, StrictModel):
        if annotation not in found:
            found.add(annotation)
            for field in annotation.model_fields.values():
                _models(field.annotation, found)
        return
    for argument in typing.get_args(annotation):
        _models(argument, found)


def _reachable_models() -> set[type[StrictModel]]:
    found: set[type[StrictModel]] = set()
    _models(GatewayConfig, found)
    return found


def test_every_model_a_config_holds_has_settings_with_each_of_its_fields():
    models = _reachable_models()
    assert len(models) >= 15  # the core's sections, every bus and device kind, their points
    for model in models:
        settings: Any = model.settings
        params: Any = getattr(settings, "__dataclass_params__", None)
        assert params is not None, f"{model.__name__}.settings is no dataclass"
        assert params.frozen, settings
        names = {field.name for field in dataclasses.fields(settings)}
        assert set(model.model_fields) <= names, (model, set(model.model_fields) - names)
        assert "pydantic" not in sys.modules[settings.__module__].__dict__, settings.__module__


def test_every_bus_type_a_config_may_name_has_a_driver():
    bus_types = {
        bus_type
        for bus_model in typing.get_args(typing.get_args(BusConfig)[0])
        for bus_type in typing.get_args(bus_model.model_fields["type"].annotation)
    }
    assert bus_types == set(DRIVERS)


EXAMPLES = [REPO / "examples" / "demo.yaml", REPO / "examples" / "fieldgate.yaml"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_settings_of_a_config_hold_its_values(path: Path):
    config = load_config(path)
    settings = to_settings(config)
    assert settings.config_hash == config.config_hash()
    # Every value the model holds is in the settings, as JSON sees them (lists as tuples).
    dumped = config.model_dump(mode="json")
    for name in GatewayConfig.model_fields:
        assert _plain(getattr(settings, name)) == dumped[name], name
    assert [type(d).__name__ for d in settings.devices] == [
        type(d).settings.__name__ for d in config.devices
    ]


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _plain(getattr(value, field.name))
            for field in dataclasses.fields(value)
            if field.name in type_fields(value)
        }
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return json.loads(json.dumps(value, default=str))


def type_fields(settings: object) -> set[str]:
    """The fields of the model whose settings these are (settings may hold a few more)."""
    for model in _reachable_models():
        if model.settings is type(settings):
            return set(model.model_fields)
    raise AssertionError(type(settings))


def test_what_a_tree_holds_once_is_built_once_and_equal_is_not_the_same():
    text = (REPO / "examples" / "demo.yaml").read_text()
    tree = settings_tree(parse_config(text))
    first, second = settings_from_tree(tree), settings_from_tree(tree)
    assert first == second
    assert first.gateway is not second.gateway  # each build is its own
    path = ("P", "/a")
    one, other = build_settings(("T", (path, path)))
    assert one is other
    # Equal trees that are not the same stay apart: 1 == 1.0 == True, but not as settings.
    built = build_settings(("T", (("T", (1,)), ("T", (1.0,)), ("T", (True,)))))
    assert [type(part[0]) for part in built] == [int, float, bool]


@pytest.mark.parametrize(
    "tree",
    [
        ("S", "os:system", ()),  # not one of ours
        ("S", "gateway.readings:Quality", ()),  # ours, but an enum, not settings
        ("E", "gateway.settings:GatewaySettings", "x"),  # not an enum
        ("X", 1),
        [1, 2],
    ],
)
def test_a_tree_names_only_our_settings(tree: object):
    with pytest.raises((TypeError, ValueError)):
        build_settings(tree)


def test_a_running_gateway_imports_neither_pydantic_nor_yaml(tmp_path: Path):
    """What `fieldgate run` imports: the settings read through the child, the service, and the
    driver of every bus type."""
    path = tmp_path / "fieldgate.yaml"
    path.write_text((REPO / "examples" / "demo.yaml").read_text())
    script = (
        "import importlib, sys\n"
        "from pathlib import Path\n"
        "from gateway.config.isolated import read_settings\n"
        "import gateway.cli, gateway.service\n"
        "from drivers.factories import DRIVERS\n"
        f"settings = read_settings(Path({str(path)!r}))\n"
        "for target in DRIVERS.values():\n"
        "    importlib.import_module(target.partition(':')[0])\n"
        "models = {'gateway.config.model', 'gateway.config.fields', 'gateway.config.loader',\n"
        "          'gateway.config.handover', 'drivers.catalog', 'drivers.modbus.templates'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'pydantic_core', 'yaml') or m in models "
        "or (m.endswith('.config') and m != 'gateway.config'))\n"
        "print(len(settings.devices), bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    devices, bad = done.stdout.split(" ", 1)
    assert int(devices) == len(load_config(path).devices)
    assert bad.strip() == "[]"
