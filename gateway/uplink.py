"""The uplink: forwards buffered readings to the MQTT broker, oldest first, and deletes each
one from the buffer only after the broker's PUBACK (QoS 1).

paho-mqtt is driven from the event loop, the way aiomqtt does it: its socket is watched with
``add_reader``/``add_writer`` and ``loop_misc`` runs once a second, so every paho callback runs on
the loop's thread and no lock is needed. Only the blocking TCP connect runs on a worker thread.
Each connection is a new paho client with a clean session: after a disconnect nothing is
resent by paho, the forwarder resends from the buffer instead, in sequence order.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.backoff import Backoff
from gateway.buffer import Buffer
from gateway.clock import Clock
from gateway.config.model import MqttConfig
from gateway.payload import encode_reading, reading_topic, status_topic

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"

#: How long to wait for CONNACK after the TCP connection is up.
_CONNACK_TIMEOUT = 10.0
#: Acknowledged readings are deleted in batches: one commit per batch, not per message.
_DELETE_BATCH = 200


class BrokerUnavailable(Exception):
    """The broker could not be reached or refused the connection; the uplink retries."""


class Uplink:
    """Owns the broker connection and the forwarding loop; run it with :meth:`run`."""

    def __init__(self, config: MqttConfig, gateway_id: str, buffer: Buffer, clock: Clock) -> None:
        self._config = config
        self._gateway_id = gateway_id
        self._buffer = buffer
        self._clock = clock
        self._backoff = Backoff(base=1.0, cap=config.reconnect_max)
        self._status_topic = status_topic(config.topic_prefix, gateway_id)
        self._session: _Session | None = None

    async def run(self) -> None:
        """Connect, forward, and reconnect with backoff, until cancelled."""
        was_up = True
        while True:
            try:
                async with _Session(self._config, self._client_id, self._will()) as session:
                    self._session = session
                    self._backoff.succeeded()
                    if not was_up:
                        log.info("broker %s is reachable again", self._where)
                    was_up = True
                    await self._forward(session)
            except BrokerUnavailable as exc:
                if was_up:
                    log.warning(
                        "broker %s unavailable: %s; readings stay buffered", self._where, exc
                    )
                was_up = False
            finally:
                self._session = None
            await self._clock.sleep(self._backoff.failed(self._clock.monotonic()))

    async def close(self) -> None:
        """Say goodbye: a retained ``offline`` (the will is not sent on a clean disconnect)."""
        session = self._session
        if session is not None:
            await session.publish_and_wait(self._status_topic, OFFLINE, retain=True, timeout=2.0)

    @property
    def _where(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    @property
    def _client_id(self) -> str:
        return self._config.client_id or f"fieldgate-{self._gateway_id}"

    def _will(self) -> tuple[str, bytes]:
        return self._status_topic, OFFLINE

    async def _forward(self, session: _Session) -> None:
        session.publish(self._status_topic, ONLINE, retain=True)
        prefix = self._config.topic_prefix
        inflight: dict[int, int] = {}  # paho message id -> sequence number
        acked: list[int] = []
        after_seq = 0
        try:
            while True:
                room = self._config.max_inflight - len(inflight)
                batch = await self._buffer.oldest(after_seq, room) if room > 0 else []
                for buffered in batch:
                    topic = reading_topic(prefix, self._gateway_id, buffered.reading.device)
                    mid = session.publish(topic, encode_reading(self._gateway_id, buffered))
                    inflight[mid] = buffered.seq
                    after_seq = buffered.seq
                for mid in session.take_acknowledged():
                    seq = inflight.pop(mid, None)
                    if seq is not None:
                        acked.append(seq)
                if acked and (len(acked) >= _DELETE_BATCH or not batch):
                    await self._buffer.delete(acked)
                    acked = []
                if batch:
                    continue
                if inflight:
                    await session.wait_for_acks(timeout=1.0)
                else:
                    await self._buffer.wait_appended(timeout=1.0)
                session.raise_if_lost()
        finally:
            # What the broker acknowledged must not be sent again after a reconnect.
            if acked:
                await self._buffer.delete(acked)


class _Session:
    """One MQTT connection by one paho client, driven by the event loop."""

    def __init__(self, config: MqttConfig, client_id: str, will: tuple[str, bytes]) -> None:
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        client.will_set(will[0], will[1], qos=1, retain=True)
        client.max_inflight_messages_set(config.max_inflight + 1)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client
        self._connack: asyncio.Future[int] = self._loop.create_future()
        self._lost = asyncio.Event()
        self._acknowledged: list[int] = []
        self._ack_arrived = asyncio.Event()
        self._awaited: dict[int, asyncio.Future[None]] = {}  # mid -> publish_and_wait's future
        self._misc_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _Session:
        try:
            await self._connect()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._close()

    async def _connect(self) -> None:
        try:
            await self._loop.run_in_executor(
                None,
                self._client.connect,
                self._config.host,
                self._config.port,
                round(self._config.keepalive),
            )
        except OSError as exc:  # refused, unreachable, name not resolved
            raise BrokerUnavailable(f"cannot connect: {exc}") from exc
        self._misc_task = asyncio.create_task(self._misc_loop(), name="mqtt-misc")
        try:
            async with asyncio.timeout(_CONNACK_TIMEOUT):
                reason = await self._connack
        except TimeoutError:
            raise BrokerUnavailable("no CONNACK from the broker") from None
        if reason != 0:
            raise BrokerUnavailable(f"connection refused: {mqtt.connack_string(reason)}")

    async def _close(self) -> None:
        if self._misc_task is not None:
            self._misc_task.cancel()
            # Collects the task's own cancellation; still raises if *we* are being cancelled.
            await asyncio.gather(self._misc_task, return_exceptions=True)
        self._client.disconnect()
        self._client.loop_write()  # sends the DISCONNECT now; paho then closes the socket
        self._drop_socket_watchers()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"publish failed: {mqtt.error_string(info.rc)}")
        return info.mid

    async def publish_and_wait(
        self, topic: str, payload: bytes, retain: bool, timeout: float
    ) -> None:
        acknowledged = self._loop.create_future()
        try:
            mid = self.publish(topic, payload, retain=retain)
            self._awaited[mid] = acknowledged
            async with asyncio.timeout(timeout):
                await acknowledged
        except (BrokerUnavailable, TimeoutError):
            log.debug("could not publish %s before closing", topic)

    def take_acknowledged(self) -> list[int]:
        taken, self._acknowledged = self._acknowledged, []
        self._ack_arrived.clear()
        return taken

    async def wait_for_acks(self, timeout: float) -> None:
        waiters = [
            asyncio.ensure_future(self._ack_arrived.wait()),
            asyncio.ensure_future(self._lost.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self.raise_if_lost()

    def raise_if_lost(self) -> None:
        if self._lost.is_set():
            raise BrokerUnavailable("connection lost")

    async def _misc_loop(self) -> None:
        # paho's keepalive pings and timeouts need a tick; there is no event to wait for.
        # Ticks well inside the keepalive, so a ping is never late.
        tick = min(1.0, self._config.keepalive / 4)
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # noqa: ASYNC110
            await asyncio.sleep(tick)
        self._lost.set()

    # paho callbacks: all run on the event loop's thread, except the socket ones fired during
    # connect(), which runs on a worker thread.
    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if not self._connack.done():
            self._connack.set_result(int(reason.value))

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, _reason: Any, _p: Any) -> None:
        self._lost.set()
        self._ack_arrived.set()
        if not self._connack.done():
            self._connack.set_result(-1)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        self._acknowledged.append(mid)
        self._ack_arrived.set()
        awaited = self._awaited.pop(mid, None)
        if awaited is not None and not awaited.done():
            awaited.set_result(None)

    def _on_socket_open(self, client: Any, _u: Any, sock: Any) -> None:
        self._on_loop(lambda: self._loop.add_reader(sock, client.loop_read), sock)

    def _on_socket_close(self, _c: Any, _u: Any, sock: Any) -> None:
        self._on_loop(lambda: self._unwatch(sock), sock)

    def _on_socket_register_write(self, client: Any, _u: Any, sock: Any) -> None:
        self._on_loop(lambda: self._loop.add_writer(sock, client.loop_write), sock)

    def _on_socket_unregister_write(self, _c: Any, _u: Any, sock: Any) -> None:
        self._on_loop(lambda: self._loop.remove_writer(sock), sock)

    def _on_loop(self, action: Callable[[], object], sock: Any) -> None:
        """Run ``action`` on the loop's thread, now if we are on it; skip it if by then the
        socket is closed (paho may open and close it on the connect thread)."""

        def guarded() -> None:
            if sock.fileno() >= 0:
                action()

        if threading.get_ident() == self._loop_thread:
            guarded()
        else:
            self._loop.call_soon_threadsafe(guarded)

    def _unwatch(self, sock: Any) -> None:
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)

    def _drop_socket_watchers(self) -> None:
        sock = self._client.socket()
        if isinstance(sock, socket.socket) and sock.fileno() >= 0:
            self._unwatch(sock)
