"""Validated config models -> the running gateway's settings (:mod:`gateway.settings`).

Each model class names its settings class (``settings: ClassVar``), a frozen dataclass of the
same field names. A model whose settings need more than its fields' values (whether a field was
given or defaulted: ``model_fields_set`` is the model's, not the data's) says so in a
``settings_extras()`` method returning the settings' other fields by name.

:func:`settings_tree` writes a validated config as a tree of plain data that
:mod:`marshal` carries out of the config reader's child; :func:`to_settings` builds the settings
in this process (``check``, a config read without the child, tests).
"""

from __future__ import annotations

import enum
from pathlib import PurePath
from typing import Any

from pydantic import BaseModel

from gateway.config.model import GatewayConfig
from gateway.settings import GatewaySettings, Tree, build_settings, settings_from_tree


def settings_tree(config: GatewayConfig) -> Tree:
    """``config`` as a settings tree, its hash (worked out here, where the models are) in it.
    A model the config holds more than once (equal points are one model, see
    :func:`gateway.config.fields.shared`) is one tree, which :mod:`marshal` writes once and
    the settings hold once."""
    tree = _Trees().of(config)
    _, name, fields = tree
    return ("S", name, (*fields, ("config_hash", config.config_hash())))


def to_settings(config: GatewayConfig) -> GatewaySettings:
    """The settings of a validated config, built in this process."""
    return settings_from_tree(settings_tree(config))


def settings_of(model: BaseModel) -> Any:
    """The settings of one validated model (a bus, a device), built in this process: for the
    tools that open one bus, and tests."""
    return build_settings(_Trees().of(model))


def settings_name(model: type[BaseModel]) -> str:
    """The settings class of ``model`` as a tree names it (``module:Qualname``)."""
    settings: Any = getattr(model, "settings", None)
    if not isinstance(settings, type):
        raise TypeError(f"{model.__name__} names no settings class")
    return f"{settings.__module__}:{settings.__qualname__}"


class _Trees:
    def __init__(self) -> None:
        # By identity: the models outlive the writing, so no id is reused meanwhile.
        self._written: dict[int, Tree] = {}

    def of(self, value: object) -> Tree:
        if isinstance(value, BaseModel):
            tree = self._written.get(id(value))
            if tree is None:
                tree = self._written[id(value)] = self._model(value)
            return tree
        if isinstance(value, enum.Enum):
            kind = type(value)
            return ("E", f"{kind.__module__}:{kind.__qualname__}", value.value)
        if isinstance(value, PurePath):
            return ("P", str(value))
        if isinstance(value, list | tuple):
            return ("T", tuple(self.of(item) for item in value))
        if isinstance(value, dict):
            return ("D", tuple((self.of(key), self.of(item)) for key, item in value.items()))
        if value is None or type(value) in (str, int, float, bool):
            return value
        raise TypeError(f"a config holds a {type(value).__name__}, which settings cannot carry")

    def _model(self, value: BaseModel) -> Tree:
        model = type(value)
        fields = tuple((name, self.of(getattr(value, name))) for name in model.model_fields)
        extras = getattr(value, "settings_extras", None)
        if callable(extras):
            fields += tuple((name, self.of(item)) for name, item in extras().items())
        return ("S", settings_name(model), fields)
