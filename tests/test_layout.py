"""The architecture, enforced: the core never imports a field-protocol library, and drivers
know nothing of the buffer or the uplink."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.harness import REPO

PROTOCOL_LIBRARIES = {"pymodbus", "serial", "bleak", "dbus_fast"}
CORE_ONLY = {"gateway.buffer", "gateway.uplink", "gateway.payload", "sqlite3", "paho"}


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def top_levels(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_core_imports_no_protocol_library():
    for path in (REPO / "gateway").rglob("*.py"):
        found = top_levels(imported_modules(path)) & PROTOCOL_LIBRARIES
        assert not found, f"{path.relative_to(REPO)} imports {found}"


def test_drivers_know_nothing_of_sqlite_or_mqtt():
    for path in (REPO / "drivers").rglob("*.py"):
        modules = imported_modules(path)
        found = {m for m in modules if m in CORE_ONLY or m.split(".")[0] in CORE_ONLY}
        assert not found, f"{path.relative_to(REPO)} imports {found}"
