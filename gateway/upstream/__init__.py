"""Upstream: buffered readings to the MQTT broker, in parts that change independently.

- :mod:`gateway.upstream.session`: one MQTT connection (paho driven by the event loop): publish,
  acknowledgements, subscriptions and incoming messages. It knows nothing of the buffer or of
  what topics mean.
- :mod:`gateway.upstream.dialect`: what goes on the wire (topics, payloads, birth, will,
  descriptions, health, goodbye), pure and tested without a broker;
  :mod:`gateway.upstream.json_dialect` is today's format.
- :mod:`gateway.upstream.homeassistant`: Home Assistant's discovery configs, from the same
  descriptions.
- :mod:`gateway.upstream.forwarder`: the policy: connect with the dialect's will, pump the buffer
  through the dialect into the session, delete on PUBACK, reconnect with backoff; the health
  message and the remote commands (:mod:`gateway.commands`) on the same session.

Nothing is imported here, so a dialect can be used without importing paho.
"""
