"""fieldgate: the gateway core (config, scheduler, buffer, uplink, health, CLI).

The core never imports a field-protocol library; drivers live in the ``drivers`` package and
meet the core only through :mod:`gateway.driver`.
"""
