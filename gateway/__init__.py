"""fieldgate: the gateway core (config, scheduler, buffer, uplink, health, CLI).

The core never imports a field-protocol library; drivers live in the ``drivers`` package and
meet the core only through :mod:`gateway.driver`.
"""


def version() -> str:
    """fieldgate's installed version, or "unknown" when run from a checkout never installed."""
    from importlib.metadata import PackageNotFoundError  # noqa: PLC0415 - only when asked
    from importlib.metadata import version as installed  # noqa: PLC0415

    try:
        return installed("fieldgate")
    except PackageNotFoundError:
        return "unknown"
