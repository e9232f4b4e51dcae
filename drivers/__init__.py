"""Field-protocol drivers. Each package turns devices on one kind of bus into
:class:`gateway.readings.Reading` objects and knows nothing of SQLite or MQTT.

The core reaches drivers only through :mod:`drivers.catalog`, which imports them lazily.
"""
