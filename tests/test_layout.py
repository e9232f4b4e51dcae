"""The architecture, enforced by allow-lists (a list of what is forbidden misses the next way in):
drivers reach the core only through the seam, the core imports no protocol library, the MQTT
library lives in the session alone, and dialects do no I/O."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests.harness import REPO

#: What a driver may import from the core: the seam and what crosses it.
DRIVER_MAY_IMPORT_FROM_CORE = {
    "gateway.readings",
    "gateway.errors",
    "gateway.clock",
    "gateway.backoff",
    "gateway.driver",
    "gateway.config.fields",
    # What a running bus gets of its config: settings (gateway/settings.py), not models.
    "gateway.settings",
    # Durations as people write them ("not heard for 5m").
    "gateway.quantities",
    # The tools (scan, probe) validate a bus's model, then open the bus with its settings.
    "gateway.config.handover",
}
#: Libraries outside the standard library that drivers may use (yaml: meter templates are YAML
#: data shipped with the Modbus driver; habluetooth: the advertisement model the BLE parsers take,
#: which are imported by name from the BLE driver's table; cryptography: AES-CCM of the encrypted
#: ATC/pvvx formats, which the BLE driver decodes itself).
DRIVER_LIBRARIES = {
    "pydantic",
    "pymodbus",
    "serial",
    "bleak",
    "dbus_fast",
    "yaml",
    "habluetooth",
    "cryptography",
}
#: Standard-library modules that belong to the core's side of the seam (storage, upstream).
CORE_SIDE_STDLIB = {"sqlite3"}

#: Libraries outside the standard library the core may use, and where.
CORE_LIBRARIES = {"pydantic", "pydantic_core", "yaml"}
CORE_LIBRARY_ROOMS = {
    "paho": {"gateway/upstream/session.py"},
    "prometheus_client": {"gateway/metrics.py"},
    # `fieldgate buffer export`, on a read-only connection beside the daemon.
    "sqlite_utils": {"gateway/buffer_report.py"},
    # The JSON dialect's encoder (issue 11: a fifteenth of the stdlib's CPU per reading), and
    # the buffer's for a row's values where its text is exact (see buffer._encode_values).
    "orjson": {"gateway/upstream/json_dialect.py", "gateway/buffer.py"},
    # The one table of drivers' config models, and the tools.
    "drivers.catalog": {"gateway/config/model.py", "gateway/cli.py"},
    # Which module opens a bus of each type (free of pydantic, for the running gateway).
    "drivers.factories": {"gateway/service.py", "gateway/cli.py"},
}
#: What a dialect (pure: no I/O) may import.
#: hashlib: a layout's id is a hash of its points (pure, no I/O). orjson: an encoder.
DIALECT_MAY_IMPORT = {
    "__future__",
    "json",
    "orjson",
    "functools",
    "operator",
    "dataclasses",
    "datetime",
    "typing",
    "collections.abc",
    "hashlib",
}


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, with ``from gateway import buffer`` as gateway.buffer."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}: relative import; write the module's full name")
    return modules


def is_module(name: str) -> bool:
    """Whether ``name`` is a module of ours (``from gateway.x import Name`` also yields the
    non-module ``gateway.x.Name``)."""
    relative = Path(*name.split("."))
    return (REPO / relative).is_dir() or (REPO / relative.with_suffix(".py")).is_file()


def is_stdlib(name: str) -> bool:
    return name.split(".", maxsplit=1)[0] in sys.stdlib_module_names


def python_files(top: str) -> list[Path]:
    files = sorted((REPO / top).rglob("*.py"))
    assert files, top
    return files


def test_drivers_reach_the_core_only_through_the_seam():
    for path in python_files("drivers"):
        where = path.relative_to(REPO)
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top == "gateway":
                if is_module(module):
                    assert module in DRIVER_MAY_IMPORT_FROM_CORE, f"{where} imports {module}"
            elif top in {"drivers", "__future__"}:
                continue
            elif is_stdlib(module):
                assert top not in CORE_SIDE_STDLIB, f"{where} imports {module}"
            else:
                assert top in DRIVER_LIBRARIES, f"{where} imports {module}"


def test_core_imports_no_protocol_library():
    for path in python_files("gateway"):
        where = str(path.relative_to(REPO))
        for module in imported_modules(path):
            top = module.split(".")[0]
            if top == "gateway" or is_stdlib(module) or top in CORE_LIBRARIES:
                continue
            rooms = [r for prefix, r in CORE_LIBRARY_ROOMS.items() if module.startswith(prefix)]
            assert rooms, f"{where} imports {module}"
            assert where in rooms[0], f"{where} imports {module}"


def test_dialects_do_no_io():
    dialects = [p for p in python_files("gateway/upstream") if "dialect" in p.name]
    assert dialects
    for path in dialects:
        for module in imported_modules(path):
            if module.split(".")[0] == "gateway":
                continue
            allowed = any(module == a or module.startswith(f"{a}.") for a in DIALECT_MAY_IMPORT)
            assert allowed, f"{path.relative_to(REPO)} imports {module}"


def test_the_allow_lists_catch_what_they_must(tmp_path: Path):
    """The checks above, tried on a driver that breaks the rules."""
    sample = tmp_path / "sample.py"
    sample.write_text("from gateway import buffer\nimport sqlite3\n")
    modules = imported_modules(sample)
    assert "gateway.buffer" in modules
    assert is_module("gateway.buffer")
    assert "gateway.buffer" not in DRIVER_MAY_IMPORT_FROM_CORE
    assert "sqlite3" in modules
    assert is_stdlib("sqlite3")
    assert "sqlite3" in CORE_SIDE_STDLIB
