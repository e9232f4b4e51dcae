"""BLE sensors through bleak: advertisements decoded by Home Assistant's parsers (streaming),
and GATT characteristics read on an interval (polled)."""
