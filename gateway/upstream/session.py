"""One MQTT connection, driven by the event loop: publish and acknowledgements, subscriptions and
the messages they bring. It knows nothing of the buffer or of what topics mean; reconnecting is
the caller's business (as aiomqtt leaves it), because each connection is a new session.

paho-mqtt is driven from the event loop, the way aiomqtt does it: its socket is watched with
``add_reader``/``add_writer`` and ``loop_misc`` runs in a task, so every paho callback runs on
the loop's thread and no lock is needed. Each connection is a new paho client with a clean
session: after a disconnect paho resends nothing; the caller resends what it still holds.

Only paho's blocking connect (name resolution and the TCP handshake) runs off the loop, on a
daemon thread of its own, never in the loop's default executor: ``asyncio.run()`` joins that
executor on shutdown, so a connect to a broker that silently drops SYNs would hold shutdown for
the whole connect timeout. A cancelled connect is abandoned at once; the thread closes whatever
socket it still opens, before a CONNECT was ever sent.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import BrokerRefused, BrokerUnavailable, SubscriptionRefused
from gateway.upstream.messages import IncomingMessage, OutgoingMessage
from gateway.upstream.security import PasswordSource, TlsSettings, describe_tls_failure

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How long to wait for CONNACK, and for SUBACK, once the TCP connection is up.
_ANSWER_TIMEOUT = 10.0
#: CONNACK reasons (as paho names them, MQTT 5 style even for 3.1.1) that mean "not now"
#: rather than "no": the broker is there but cannot take us yet.
_TRANSIENT_REFUSALS = {"Server unavailable", "Server busy", "Quota exceeded"}


class MqttSession:
    """``async with MqttSession(...) as session:`` one connection, made on enter (CONNACK
    received) and closed on exit with a DISCONNECT, so the broker does not publish the will.

    Raises :class:`BrokerUnavailable` when the broker cannot be reached, does not answer or
    drops the connection, and :class:`BrokerRefused` when it refuses the connection. Create it
    and use it on one event loop; a session is used once.
    """

    def __init__(
        self,
        host: str,
        port: int,
        keepalive: float,
        client_id: str,
        *,
        will: OutgoingMessage | None = None,
        max_inflight: int = 20,
        username: str | None = None,
        password: str | PasswordSource | None = None,
        tls: TlsSettings | None = None,
        protocol: Literal["3.1.1", "5"] = "3.1.1",
        connect_timeout: float = 10.0,
        incoming_limit: int = 1000,
    ) -> None:
        """``password`` is the password itself, or where to read it on each connect (never on
        the event loop: see :mod:`gateway.upstream.security`, as for ``tls``)."""
        self._host = host
        self._port = port
        # paho takes whole seconds; 0 would switch keepalive off.
        self._keepalive = max(1, round(keepalive))
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # reconnect_on_failure=False: otherwise paho answers some CONNACK refusals by
        # reconnecting itself, with a blocking connect on the loop's thread.
        if protocol == "5":
            # MQTT 5 has clean_start (paho's default: on the first connect, and each client
            # connects once) instead of a clean session.
            client = _Client(
                CallbackAPIVersion.VERSION2,
                client_id,
                protocol=mqtt.MQTTv5,
                reconnect_on_failure=False,
            )
        else:
            client = _Client(
                CallbackAPIVersion.VERSION2,
                client_id,
                clean_session=True,
                protocol=mqtt.MQTTv311,
                reconnect_on_failure=False,
            )
        client.connect_timeout = connect_timeout
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        self._username = username
        self._password = password
        self._tls = tls
        client.max_inflight_messages_set(max_inflight)
        client.max_queued_messages_set(0)  # no limit: the caller bounds what it sends
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        self._client = client
        self._entered = False
        self._closed = False
        #: True while the connect thread owns the client; the loop must not touch it then.
        self._client_on_thread = False
        self._connack: asyncio.Future[ReasonCode | None] = self._loop.create_future()
        self._lost = asyncio.Event()
        self._acknowledged: list[int] = []
        self._ack_arrived = asyncio.Event()
        self._awaited: dict[int, asyncio.Future[None]] = {}  # mid -> publish_and_wait's future
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._incoming: asyncio.Queue[IncomingMessage] = asyncio.Queue(maxsize=incoming_limit)
        #: Incoming messages dropped because the queue was full (the consumer fell behind).
        self.dropped_messages = 0
        self._misc_task: asyncio.Task[None] | None = None

    @property
    def where(self) -> str:
        return f"{self._host}:{self._port}"

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("an MqttSession is used once; make a new one to reconnect")
        self._entered = True
        try:
            await self._connect()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue a message; returns its message id, which :meth:`take_acknowledged` reports
        once the broker acknowledged it (PUBACK for QoS 1, sent for QoS 0)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"publish failed: {mqtt.error_string(info.rc)}")
        return info.mid

    def take_acknowledged(self) -> list[int]:
        """Message ids acknowledged since the last call (those of :meth:`publish_and_wait`
        included)."""
        taken, self._acknowledged = self._acknowledged, []
        self._ack_arrived.clear()
        return taken

    async def wait_for_acks(self, timeout: float) -> None:
        """Return when an acknowledgement is waiting to be taken, or after ``timeout``; raise
        :class:`BrokerUnavailable` if the connection is lost."""
        if not self._acknowledged:
            await self._first_of(self._ack_arrived, timeout)
        self.raise_if_lost()

    async def publish_and_wait(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, *, timeout: float
    ) -> int:
        """Publish and wait for the acknowledgement; raises :class:`BrokerUnavailable` if it
        does not come within ``timeout`` or the connection is lost."""
        acknowledged: asyncio.Future[None] = self._loop.create_future()
        mid = self.publish(topic, payload, qos=qos, retain=retain)
        self._awaited[mid] = acknowledged
        try:
            await self._answer(acknowledged, timeout, f"no acknowledgement for {topic}")
        finally:
            self._awaited.pop(mid, None)
        return mid

    def raise_if_lost(self) -> None:
        if self._lost.is_set():
            raise BrokerUnavailable(f"connection to {self.where} lost")

    # -- subscribing --------------------------------------------------------------------------

    async def subscribe(self, topic: str, qos: int = 1) -> int:
        """Subscribe and wait for SUBACK; returns the QoS the broker granted. Raises
        :class:`SubscriptionRefused` if the broker refuses (its ACL), :class:`BrokerUnavailable`
        if it does not answer or the connection is lost."""
        result, mid = self._client.subscribe(topic, qos=qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerUnavailable(f"subscribe failed: {mqtt.error_string(result)}")
        answered: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        self._subacks[mid] = answered
        try:
            codes = await self._answer(answered, _ANSWER_TIMEOUT, f"no SUBACK for {topic}")
        finally:
            self._subacks.pop(mid, None)
        code = codes[0]
        if code.is_failure:
            raise SubscriptionRefused(
                f"the broker {self.where} refused the subscription to {topic!r}: {code}; check "
                "the broker's ACL for this client's user",
                reason=str(code),
            )
        return int(code.value)

    async def messages(self) -> AsyncGenerator[IncomingMessage, None]:
        """The messages of every subscription, in arrival order. Messages received before the
        connection was lost are still yielded; then :class:`BrokerUnavailable` is raised. The
        iteration ends when the session is closed.

        The queue behind it holds ``incoming_limit`` messages. When the consumer falls that far
        behind, further messages are dropped and counted in :attr:`dropped_messages` (logged
        once per session): they were already acknowledged to the broker, so this is a loss, but
        it keeps a stalled consumer from stalling the PUBACKs the forwarder waits for.
        """
        while True:
            try:
                yield self._incoming.get_nowait()
                continue
            except asyncio.QueueEmpty:
                pass
            if self._closed:
                return
            self.raise_if_lost()
            getter = asyncio.ensure_future(self._incoming.get())
            try:
                await self._first_of(getter, timeout=None)
            finally:
                # A getter cancelled after it was woken leaves its message in the queue.
                getter.cancel()
            if getter.done() and not getter.cancelled():
                yield getter.result()

    # -- connecting and closing ---------------------------------------------------------------

    async def _connect(self) -> None:
        attempt = _ConnectThread(
            self._loop, self._client, self._host, self._port, self._keepalive, prepare=self._prepare
        )
        self._client_on_thread = True
        attempt.start()
        try:
            await attempt.result
        except BaseException:
            # Cancelled while connecting: the thread keeps the client and closes its socket.
            # Failed, or cancelled just after the outcome arrived: the client is ours to close.
            self._client_on_thread = attempt.abandon()
            raise
        self._client_on_thread = False
        # The connect thread's socket callbacks were ignored: the loop starts watching now.
        self._watch_after_connect()
        self._misc_task = asyncio.create_task(self._misc_loop(), name=f"mqtt-misc {self.where}")
        reason = await self._answer(self._connack, _ANSWER_TIMEOUT, "no CONNACK")
        if reason is None:
            if self._tls is not None:
                # With TLS 1.3 the broker's verdict on our certificate comes after the
                # handshake, as a closed connection: the likeliest cause, named.
                raise BrokerRefused(
                    f"{self.where} closed the connection before CONNACK: it did not accept "
                    "our client certificate, or wants one; check mqtt.tls.cert_file and "
                    "key_file (present, signed by a CA the broker trusts, not expired)",
                    reason="closed before CONNACK",
                )
            raise BrokerUnavailable(f"{self.where} closed the connection before CONNACK")
        if reason.is_failure:
            raise self._refusal(str(reason))

    def _prepare(self) -> None:
        """On the connect thread: the file reads that TLS and the password need."""
        if self._tls is not None:
            self._client.tls_set_context(self._tls.context())
            if not self._tls.verify_hostname:
                self._client.tls_insecure_set(True)
        if self._username is not None:
            password = self._password
            if isinstance(password, PasswordSource):
                password = password.read()
            self._client.username_pw_set(self._username, password)

    def _refusal(self, reason: str) -> BrokerUnavailable | BrokerRefused:
        if reason in _TRANSIENT_REFUSALS:
            return BrokerUnavailable(f"{self.where} refused the connection for now: {reason}")
        hint = {
            "Bad user name or password": "check the username and password",
            "Not authorized": "check the username and password and the broker's ACL",
            "Client identifier not valid": "check mqtt.client_id",
            "Unsupported protocol version": "the broker must accept MQTT 3.1.1",
        }.get(reason, "check the broker's log")
        return BrokerRefused(
            f"the broker {self.where} refused the connection: {reason}; {hint}", reason=reason
        )

    async def _close(self) -> None:
        self._closed = True
        if self._misc_task is not None:
            self._misc_task.cancel()
            # Collects the task's own cancellation; still raises if *we* are being cancelled.
            await asyncio.gather(self._misc_task, return_exceptions=True)
        if self._client_on_thread:
            return  # the connect thread owns the client and closes its socket itself
        self._client.disconnect()
        self._client.loop_write()  # sends the DISCONNECT now; paho then closes the socket
        self._drop_socket_watchers()
        self._lost.set()

    async def _misc_loop(self) -> None:
        # paho's keepalive pings and timeouts need a tick; there is no event to wait for.
        # Ticks well inside the keepalive, so a ping is never late.
        tick = min(1.0, self._keepalive / 4)
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # noqa: ASYNC110
            await asyncio.sleep(tick)
        self._connection_lost()

    # -- waiting ------------------------------------------------------------------------------

    async def _first_of(
        self, awaited: asyncio.Event | asyncio.Future[Any], timeout: float | None
    ) -> None:
        """Wait for ``awaited`` or the loss of the connection, whichever comes first, at most
        ``timeout`` seconds."""
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._lost.wait())]
        if isinstance(awaited, asyncio.Event):
            waiters.append(asyncio.ensure_future(awaited.wait()))
        else:
            waiters.append(awaited)
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiters[0].cancel()
            if isinstance(awaited, asyncio.Event):
                waiters[1].cancel()

    async def _answer(self, answer: asyncio.Future[_T], timeout: float, missing: str) -> _T:
        """The broker's answer, or :class:`BrokerUnavailable` naming what is ``missing``."""
        await self._first_of(answer, timeout)
        if answer.done():
            return answer.result()
        answer.cancel()
        self.raise_if_lost()
        raise BrokerUnavailable(f"{missing} from {self.where} within {timeout:g} s")

    # -- paho callbacks: all on the loop's thread (the socket ones may also come from the
    # -- connect thread, and are ignored there)

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        if not self._connack.done():
            self._connack.set_result(reason)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, _reason: Any, _p: Any) -> None:
        self._connection_lost()

    def _connection_lost(self) -> None:
        self._lost.set()
        if not self._connack.done():
            self._connack.set_result(None)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _reason: Any, _p: Any) -> None:
        self._acknowledged.append(mid)
        self._ack_arrived.set()
        awaited = self._awaited.pop(mid, None)
        if awaited is not None and not awaited.done():
            awaited.set_result(None)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        answered = self._subacks.pop(mid, None)
        if answered is not None and not answered.done():
            answered.set_result(codes)

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        incoming = IncomingMessage(
            message.topic, bytes(message.payload), int(message.qos), bool(message.retain)
        )
        try:
            self._incoming.put_nowait(incoming)
        except asyncio.QueueFull:
            if self.dropped_messages == 0:
                log.warning(
                    "incoming messages from %s are dropped: %d wait unread (logged once per "
                    "connection; the count is in dropped_messages)",
                    self.where,
                    self._incoming.maxsize,
                )
            self.dropped_messages += 1

    def _on_socket_open(self, client: Any, _u: Any, sock: Any) -> None:
        if self._on_loop_thread():
            self._loop.add_reader(sock, client.loop_read)

    def _on_socket_close(self, _c: Any, _u: Any, sock: Any) -> None:
        if self._on_loop_thread():
            self._unwatch(sock)

    def _on_socket_register_write(self, client: Any, _u: Any, sock: Any) -> None:
        if self._on_loop_thread():
            self._loop.add_writer(sock, client.loop_write)

    def _on_socket_unregister_write(self, _c: Any, _u: Any, sock: Any) -> None:
        if self._on_loop_thread():
            self._loop.remove_writer(sock)

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _watch_after_connect(self) -> None:
        sock = self._client.socket()
        if not isinstance(sock, socket.socket) or sock.fileno() < 0:
            raise BrokerUnavailable(f"{self.where}: the connection closed while it was made")
        self._loop.add_reader(sock, self._client.loop_read)
        # The CONNECT packet is queued, not sent: paho leaves writing to us once a
        # register-write callback is set.
        if self._client.want_write():
            self._loop.add_writer(sock, self._client.loop_write)

    def _unwatch(self, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _drop_socket_watchers(self) -> None:
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            self._unwatch(sock)


class _Client(mqtt.Client):
    """paho's client with its per-message costs cut where they are pure overhead for us, each
    with the same outcome as paho's own code (tests/test_session.py checks these overrides
    against the installed paho, as every session test exercises them):

    - paho reads a packet with a ``recv`` per byte of its header and one for the rest (three
      system calls per PUBACK): the socket is read 64 KiB at a time and paho's small reads are
      served from that;
    - consecutive packets whose sending has no consequence of its own (everything but a QoS 0
      PUBLISH and a DISCONNECT) go out in one ``send`` instead of one each;
    - a 2-byte PUBACK (all of 3.1.1's, and 5's without a reason or properties) is decoded
      without building a reason code and a property set per message, which nobody reads;
    - after each PUBACK paho walks every message in flight looking for one it queued behind
      its window: it does so only when one is queued.
    """

    #: At most this much is sent as one packet of merged packets (paho resends the unsent rest
    #: of a packet by slicing it: keep that bounded).
    _MERGE_LIMIT = 1 << 16

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rx = bytearray()
        self._rx_sock: object = None

    def _sock_recv(self, bufsize: int) -> bytes:
        rx = self._rx
        if self._rx_sock is not self._sock:  # a new socket: nothing read from the old counts
            rx.clear()
            self._rx_sock = self._sock
        if not rx:
            data = super()._sock_recv(_READ_SIZE)
            if len(data) <= bufsize:
                return data  # also b"" at the end of the stream, as paho expects
            rx += data
        taken = bytes(rx[:bufsize])
        del rx[:bufsize]
        return taken

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho stops after as many packets as it has messages in flight (at least one), but
        # what was read ahead must not wait for the socket to become readable again: go on
        # while it lasts (each round takes at least one byte of it). A TLS socket may hold a
        # decrypted record too.
        rc = super().loop_read(max_packets)
        while rc == mqtt.MQTT_ERR_SUCCESS and self._sock is not None and self._read_ahead():
            rc = super().loop_read(max_packets)
        return rc

    def _read_ahead(self) -> bool:
        if self._rx and self._rx_sock is self._sock:
            return True
        pending = getattr(self._sock, "pending", None)
        return pending is not None and bool(pending())

    def loop_write(self) -> MQTTErrorCode:
        queue = self._out_packet
        if len(queue) > 1:
            self._merge_out_packets(queue)
        return super().loop_write()

    def _merge_out_packets(self, queue: Any) -> None:
        merged: list[Any] = []
        run: list[Any] = []
        size = 0
        for packet in queue:
            plain = _plain(packet)
            if plain and size + packet["to_process"] <= self._MERGE_LIMIT:
                run.append(packet)
                size += packet["to_process"]
                continue
            merged.extend(_joined(run))
            run, size = [], 0
            if plain:
                run.append(packet)
                size = packet["to_process"]
            else:
                merged.append(packet)
        merged.extend(_joined(run))
        if len(merged) < len(queue):
            queue.clear()
            queue.extend(merged)

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        if cmd != "PUBACK" or len(packet) != 2:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, _PUBACK_SUCCESS, _NO_PROPERTIES)
        return mqtt.MQTT_ERR_SUCCESS

    def _update_inflight(self) -> MQTTErrorCode:
        # Every message held is in flight (none waits behind the window): nothing to send.
        if len(self._out_messages) <= self._inflight_messages:
            return mqtt.MQTT_ERR_SUCCESS
        return super()._update_inflight()


#: How much one read of the broker's socket takes.
_READ_SIZE = 1 << 16
#: What paho gives on_publish for a PUBACK without a reason code or properties.
_PUBACK_SUCCESS = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]  # paho's


def _plain(packet: Any) -> bool:
    """Whether sending ``packet`` has no consequence but its bytes on the wire (paho acts on
    a QoS 0 PUBLISH and a DISCONNECT once sent), and none of it was sent yet."""
    if packet["pos"] != 0:
        return False
    kind = packet["command"] & 0xF0
    return kind != mqtt.DISCONNECT and not (kind == mqtt.PUBLISH and packet["qos"] == 0)


def _joined(run: list[Any]) -> list[Any]:
    """Consecutive packets as one (see _Client), or the run as it is when it is one packet."""
    if len(run) < 2:
        return run
    first = run[0]
    data = b"".join(packet["packet"] for packet in run)
    return [{**first, "packet": data, "to_process": len(data), "info": None}]


class _ConnectThread:
    """paho's blocking ``connect()`` on a daemon thread, its outcome delivered to a future on
    the loop.

    Ownership of the client is handed over exactly once: to the loop, if the outcome arrives
    while someone still waits for it; otherwise (the wait was cancelled, or the loop is gone)
    the thread keeps it and closes the socket it opened. paho only queues the CONNECT packet
    during ``connect()`` (writing is left to the loop), so an abandoned socket is closed before
    the broker ever saw a CONNECT: no session, no will.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: mqtt.Client,
        host: str,
        port: int,
        keepalive: int,
        *,
        prepare: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._prepare = prepare
        self._client = client
        self._host = host
        self._port = port
        self._keepalive = keepalive
        self._lock = threading.Lock()
        self.abandoned = False
        self.result: asyncio.Future[None] = loop.create_future()
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-connect {host}:{port}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def abandon(self) -> bool:
        """Stop waiting (on the loop's thread). Returns True if the thread now owns the client,
        False if the outcome had already been delivered and the client is the caller's."""
        with self._lock:
            if self.result.done() and not self.result.cancelled():
                return False
            self.abandoned = True
        self.result.cancel()
        return True

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self._prepare()
            rc = self._client.connect(self._host, self._port, self._keepalive)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                error = BrokerUnavailable(
                    f"cannot connect to {self._host}:{self._port}: {mqtt.error_string(rc)}"
                )
        except ssl.SSLError as exc:  # the broker's certificate, or ours, was not accepted
            _close_sockets_left_in(exc)
            error = BrokerRefused(
                f"cannot connect to {self._host}:{self._port}: "
                f"{describe_tls_failure(exc, self._host)}",
                reason="TLS handshake failed",
            )
        except OSError as exc:  # refused, unreachable, timed out, name not resolved
            error = BrokerUnavailable(f"cannot connect to {self._host}:{self._port}: {exc}")
        except Exception as exc:  # noqa: BLE001 - handed to the loop, which raises it
            error = exc
        with self._lock:
            if not self.abandoned:
                try:
                    self._loop.call_soon_threadsafe(self._deliver, error)
                except RuntimeError:  # the loop is closed: nobody will take the connection
                    self.abandoned = True
                else:
                    return
        self._discard()

    def _deliver(self, error: BaseException | None) -> None:
        # On the loop's thread, as abandon() is, so the two cannot interleave.
        if self.result.done():  # cancelled: nobody waits any more
            self.abandoned = True
            self._discard()
        elif error is None:
            self.result.set_result(None)
        else:
            self.result.set_exception(error)

    def _discard(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            sock.close()


def _close_sockets_left_in(exc: BaseException) -> None:
    """paho leaves the socket of a failed TLS handshake open (its ``_ssl_wrap_socket`` raises
    from ``do_handshake`` without closing it); close what the failing frames still hold."""
    frame_of = exc.__traceback__
    while frame_of is not None:
        for value in frame_of.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()
        frame_of = frame_of.tb_next
