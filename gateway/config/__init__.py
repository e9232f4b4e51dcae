"""Configuration: typed models (:mod:`.model`), YAML loading with line-accurate errors
(:mod:`.loader`) and the quantities people write (:mod:`.fields`).

Kept free of imports so that drivers can import :mod:`.fields` without pulling in the whole
model, which itself imports the drivers' config models through :mod:`drivers.catalog`.
"""
