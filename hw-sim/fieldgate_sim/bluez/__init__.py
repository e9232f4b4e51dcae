"""A simulated BlueZ on a private D-Bus system bus, for bleak's real Linux backend: sensors
that advertise each supported format with changing values, a GATT sensor, and faults."""
