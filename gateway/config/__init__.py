"""Configuration: typed models (:mod:`.model`), YAML loading with line-accurate errors
(:mod:`.loader`) and the quantities people write (:mod:`.fields`).

Kept free of imports of our own so that drivers can import :mod:`.fields` without pulling in the
whole model, which itself imports the drivers' config models through :mod:`drivers.catalog`.
"""

from pathlib import Path

#: Where the config is unless ``-c`` says otherwise: what `make install` and the unit use.
DEFAULT_CONFIG_PATH = Path("/etc/fieldgate/fieldgate.yaml")
