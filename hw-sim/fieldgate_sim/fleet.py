"""The fleet side, simulated: an MQTT subscriber that collects what gateways publish, for tests,
the demo and the benchmarks. It checks nothing itself; callers assert on what it collected."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class FleetSubscriber:
    """Subscribes to ``topic`` (QoS 1) on a broker and keeps every message, in arrival order."""

    def __init__(
        self,
        port: int,
        topic: str = "#",
        host: str = "127.0.0.1",
        on_message: Callable[[Received], None] | None = None,
        *,
        ca_file: Path | None = None,
        client_cert: tuple[Path, Path] | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        """``ca_file``: speak TLS to a broker whose certificate that CA signed;
        ``client_cert``: (certificate, key) for a broker that wants mutual TLS."""
        self._host, self._port, self._topic = host, port, topic
        self._callback = on_message
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        #: (gateway, layout id) -> device description, kept as a fleet consumer keeps them.
        self._descriptions: dict[tuple[str, str], dict[str, Any]] = {}
        self._subscribed = threading.Event()
        # A persistent session: while the subscriber reconnects after a broker restart, the
        # broker queues what gateways publish for it, so a test sees every message.
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fleet-{uuid.uuid4().hex[:12]}",
            clean_session=False,
        )
        if ca_file is not None:
            cert, key = client_cert or (None, None)
            self._client.tls_set(
                ca_certs=str(ca_file),
                certfile=str(cert) if cert else None,
                keyfile=str(key) if key else None,
            )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        # The broker may restart during a test: paho's loop reconnects on its own.
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)

    def start(self, timeout: float = 5.0) -> None:
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TimeoutError(f"could not subscribe to {self._topic} on port {self._port}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def messages(self, topic_filter: Callable[[str], bool] | None = None) -> list[Received]:
        with self._lock:
            return [m for m in self._messages if topic_filter is None or topic_filter(m.topic)]

    def readings(self) -> list[dict[str, Any]]:
        """The JSON payloads of every device reading received, in arrival order."""
        return [m.json() for m in self.messages(lambda t: t.endswith("/reading"))]

    def description(self, reading: dict[str, Any]) -> dict[str, Any]:
        """The device description a reading names (by its gateway and layout id), as the fleet
        keeps them; KeyError if it never arrived."""
        with self._lock:
            return self._descriptions[(reading["gateway"], reading["layout"])]

    def values(self, reading: dict[str, Any]) -> dict[str, Any]:
        """A reading's values by point name, read through its description."""
        points = self.description(reading)["points"]
        return {
            point["name"]: value for point, value in zip(points, reading["values"], strict=True)
        }

    def units(self, reading: dict[str, Any]) -> dict[str, str | None]:
        """A reading's units by point name, from its description."""
        return {point["name"]: point["unit"] for point in self.description(reading)["points"]}

    def wait_for(
        self, condition: Callable[[FleetSubscriber], bool], timeout: float, poll: float = 0.05
    ) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self):
                return True
            time.sleep(poll)
        return condition(self)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self._topic, qos=1)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: Any, _codes: Any, _p: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        received = Received(message.topic, bytes(message.payload), bool(message.retain))
        with self._lock:
            self._messages.append(received)
            if received.topic.endswith("/description") and received.payload:
                document = received.json()
                self._descriptions[(document["gateway"], document["layout"])] = document
        if self._callback is not None:
            self._callback(received)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
