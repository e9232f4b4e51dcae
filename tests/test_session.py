"""The MQTT session against a real Mosquitto: message ids and their PUBACKs, subscriptions and
the incoming stream, refusals with a reason, a lost connection, and a connect that is cancelled
while the broker never answers (it must not hold asyncio.run's shutdown)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from fieldgate_sim.mosquitto import MosquittoBroker, free_port
from paho.mqtt.enums import CallbackAPIVersion

from gateway.errors import BrokerRefused, BrokerUnavailable, SubscriptionRefused
from gateway.upstream.messages import IncomingMessage, OutgoingMessage
from gateway.upstream.session import MqttSession, _Client

#: Liveness bound for anything that should take milliseconds; never a performance claim.
PATIENCE = 20.0


def session_to(broker: MosquittoBroker, client_id: str, **options) -> MqttSession:
    return MqttSession(broker.host, broker.port, 5, client_id, **options)


async def wait_acknowledged(session: MqttSession, mids: set[int]) -> set[int]:
    seen: set[int] = set()
    async with asyncio.timeout(PATIENCE):
        while not mids <= seen:
            await session.wait_for_acks(timeout=1.0)
            seen.update(session.take_acknowledged())
    return seen


async def take(session: MqttSession, count: int) -> list[IncomingMessage]:
    received: list[IncomingMessage] = []
    async with asyncio.timeout(PATIENCE), contextlib.aclosing(session.messages()) as stream:
        async for message in stream:
            received.append(message)
            if len(received) == count:
                break
    return received


async def test_publish_returns_ids_that_come_back_acknowledged(broker: MosquittoBroker):
    async with session_to(broker, "publisher", max_inflight=10) as session:
        mids = [session.publish(f"t/{i}", b"x") for i in range(50)]
        assert len(set(mids)) == 50
        assert await wait_acknowledged(session, set(mids)) == set(mids)
        mid = await session.publish_and_wait("t/last", b"y", retain=True, timeout=PATIENCE)
        assert mid in session.take_acknowledged()


async def test_subscribers_receive_own_and_other_clients_messages(broker: MosquittoBroker):
    async with session_to(broker, "a") as a, session_to(broker, "b") as b:
        assert await a.subscribe("t/#", qos=1) == 1
        a.publish("t/self", b"1")
        await b.publish_and_wait("t/other", b"2", timeout=PATIENCE)
        received = await take(a, 2)
    assert sorted(received, key=lambda m: m.topic) == [
        IncomingMessage("t/other", b"2", qos=1, retain=False),
        IncomingMessage("t/self", b"1", qos=1, retain=False),
    ]


async def test_the_stream_ends_when_the_session_closes(broker: MosquittoBroker):
    async with session_to(broker, "closing") as session:
        await session.subscribe("c/#")
        consumer = asyncio.create_task(take(session, 1))
        await asyncio.sleep(0)  # the consumer waits for a message
    async with asyncio.timeout(PATIENCE):
        assert await consumer == []


async def test_retained_message_arrives_flagged_retained(broker: MosquittoBroker):
    async with session_to(broker, "writer") as writer:
        await writer.publish_and_wait("r/x", b"kept", retain=True, timeout=PATIENCE)
    async with session_to(broker, "reader") as reader:
        await reader.subscribe("r/#", qos=0)
        assert await take(reader, 1) == [IncomingMessage("r/x", b"kept", qos=0, retain=True)]


async def test_a_slow_consumer_loses_the_overflow_counted_and_logged_once(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.WARNING, logger="gateway.upstream.session")
    async with (
        session_to(broker, "slow", incoming_limit=2) as slow,
        session_to(broker, "fast") as fast,
    ):
        await slow.subscribe("q/#")
        for i in range(5):
            await fast.publish_and_wait(f"q/{i}", b"", timeout=PATIENCE)
        async with asyncio.timeout(PATIENCE):
            while slow.dropped_messages < 3:  # noqa: ASYNC110 - a counter, no event to await
                await asyncio.sleep(0.02)
        assert [m.topic for m in await take(slow, 2)] == ["q/0", "q/1"]
    assert len([r for r in caplog.records if "are dropped" in r.getMessage()]) == 1


async def test_lost_connection_ends_the_stream_and_the_waits(broker: MosquittoBroker):
    async with session_to(broker, "left") as session:
        await session.subscribe("x/#")
        broker.stop()
        with pytest.raises(BrokerUnavailable, match="lost"):
            await take(session, 1)
        with pytest.raises(BrokerUnavailable):
            await session.wait_for_acks(timeout=PATIENCE)
        with pytest.raises(BrokerUnavailable):
            session.publish("x/y", b"")


async def test_nobody_listening_is_unavailable():
    with pytest.raises(BrokerUnavailable, match="cannot connect"):
        async with MqttSession("127.0.0.1", free_port(), 5, "nobody"):
            pass


@pytest.fixture
def secured() -> Iterator[MosquittoBroker]:
    with MosquittoBroker(users={"alice": "secret"}) as running:
        yield running


@pytest.mark.parametrize(
    "credentials", [{}, {"username": "alice", "password": "wrong"}, {"username": "mallory"}]
)
async def test_refused_connection_names_the_reason(secured: MosquittoBroker, credentials):
    with pytest.raises(BrokerRefused) as refused:
        async with session_to(secured, "intruder", **credentials):
            pass
    assert refused.value.reason in {"Not authorized", "Bad user name or password"}
    message = str(refused.value)
    assert f"{secured.host}:{secured.port} refused the connection: {refused.value.reason}" in (
        message
    )
    assert "check the username and password" in message


async def test_right_credentials_connect(secured: MosquittoBroker):
    will = OutgoingMessage("status", b"gone", retain=True)
    async with session_to(secured, "alice", username="alice", password="secret", will=will) as s:
        assert await s.subscribe("x/#") == 1
        await s.publish_and_wait("x/y", b"", timeout=PATIENCE)


async def test_refused_subscription_is_typed_and_keeps_the_connection():
    """Mosquitto 2.0 grants subscriptions its ACL denies (MQTT 3.1.1): a scripted broker sends
    the SUBACK failure code (0x80) that other brokers send."""

    async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        kind = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return kind, await reader.readexactly(length)

    served = asyncio.Event()

    async def refuse_subscriptions(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while True:
                kind, body = await read_packet(reader)
                if kind >> 4 == 1:  # CONNECT -> CONNACK accepted
                    writer.write(b"\x20\x02\x00\x00")
                elif kind >> 4 == 8:  # SUBSCRIBE -> SUBACK with the failure code
                    writer.write(b"\x90\x03" + body[:2] + b"\x80")
                elif kind >> 4 == 14:  # DISCONNECT
                    break
        finally:
            writer.close()
            await writer.wait_closed()
            served.set()

    server = await asyncio.start_server(refuse_subscriptions, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        async with MqttSession("127.0.0.1", port, 5, "refused") as session:
            with pytest.raises(SubscriptionRefused, match=r"'forbidden/#'.*ACL") as refused:
                await session.subscribe("forbidden/#")
            assert isinstance(refused.value, BrokerRefused)
            session.raise_if_lost()
        async with asyncio.timeout(PATIENCE):
            await served.wait()


@pytest.fixture
def black_hole() -> Iterator[tuple[socket.socket, int]]:
    """A listener whose accept queue (backlog 0) is full: the kernel drops further SYNs, as a
    broker behind a dropping firewall would. Yields the listener and its port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            yield listener, port


def test_cancelled_connect_is_abandoned_and_its_late_socket_closed(
    black_hole: tuple[socket.socket, int],
):
    listener, port = black_hole
    seen: dict[str, list[threading.Thread]] = {}

    async def connect_then_cancel() -> None:
        before = set(threading.enumerate())
        # Far longer than this test may take: if anything waited for the connect, it shows.
        session = MqttSession("127.0.0.1", port, 5, "patient", connect_timeout=600)
        entering = asyncio.create_task(session.__aenter__())
        async with asyncio.timeout(PATIENCE):
            while not set(threading.enumerate()) - before:  # noqa: ASYNC110 - other threads
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # let the SYN go out and be dropped
        entering.cancel()
        with pytest.raises(asyncio.CancelledError):
            await entering
        seen["started"] = list(set(threading.enumerate()) - before)

    # asyncio.run in a thread of its own, so that a shutdown held for the connect timeout
    # would show as a thread still alive, not as a test that hangs.
    runner = threading.Thread(target=asyncio.run, args=(connect_then_cancel(),))
    runner.start()
    runner.join(timeout=PATIENCE * 3)
    assert not runner.is_alive(), "asyncio.run() did not return: the connect held its shutdown"

    (connecting,) = seen["started"]  # no executor thread, only the connect's own
    assert connecting.name.startswith("mqtt-connect")
    assert connecting.daemon

    # Make room in the queue: the next SYN retransmission completes the handshake, and the
    # abandoned thread must close that socket without sending CONNECT.
    listener.settimeout(PATIENCE * 3)
    first, _ = listener.accept()
    first.close()
    late, _ = listener.accept()
    with late:
        late.settimeout(PATIENCE * 3)
        assert late.recv(1024) == b""
    connecting.join(timeout=PATIENCE * 3)
    assert not connecting.is_alive()


# -- the paho client's overrides, against a scripted broker on a real TCP socket ---------------


@contextlib.contextmanager
def scripted_broker(
    max_inflight: int = 10,
) -> Iterator[tuple[_Client, socket.socket, list[tuple[object, ...]]]]:
    """A connected ``_Client`` and the broker's end of its TCP connection (CONNACK sent), and
    what the client's callbacks saw (("ack", mid) and ("message", topic, payload))."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = _Client(
            CallbackAPIVersion.VERSION2, "scripted", protocol=mqtt.MQTTv311, clean_session=True
        )
        client.max_inflight_messages_set(max_inflight)
        seen: list[tuple[object, ...]] = []
        client.on_publish = lambda _c, _u, mid, _r, _p: seen.append(("ack", mid))
        client.on_message = lambda _c, _u, m: seen.append(("message", m.topic, m.payload))
        # With a register-write callback paho leaves every write to loop_write, as on the loop.
        client.on_socket_register_write = lambda *_: None
        client.connect("127.0.0.1", listener.getsockname()[1], keepalive=60)
        broker, _ = listener.accept()
        with broker:
            broker.settimeout(PATIENCE)
            client.loop_write()
            assert received_packets(broker, 1)[0][0] >> 4 == 1  # CONNECT
            broker.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
            wait_until_read(client, client.is_connected)
            try:
                yield client, broker, seen
            finally:
                client_socket(client).close()


def received_packets(broker: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """``count`` MQTT packets (first byte, rest after the length) read by the broker."""
    data = b""
    packets: list[tuple[int, bytes]] = []
    while len(packets) < count:
        data += broker.recv(65536)
        while len(data) >= 2:
            length, shift, at = 0, 0, 1
            while True:
                byte = data[at]
                length |= (byte & 0x7F) << shift
                shift, at = shift + 7, at + 1
                if not byte & 0x80:
                    break
            if len(data) < at + length:
                break
            packets.append((data[0], data[at : at + length]))
            data = data[at + length :]
    assert not data
    return packets


def client_socket(client: _Client) -> socket.socket:
    sock = client.socket()
    assert isinstance(sock, socket.socket)
    return sock


def wait_until_read(client: _Client, condition: Callable[[], bool]) -> None:
    sock = client_socket(client)
    deadline = PATIENCE
    while not condition():
        readable, _, _ = select.select([sock], [], [], deadline)
        assert readable, "nothing arrived"
        client.loop_read()


def publish_packet(topic: str, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + payload
    return bytes([0x30, len(body)]) + body


def test_what_arrives_together_is_handled_by_one_read():
    # Read ahead in one go: two messages and three PUBACKs that arrive together must all be
    # handled now, although paho stops after as many packets as it has messages in flight
    # and the socket will not be readable again for what was already taken from it.
    with scripted_broker() as (client, broker, seen):
        mids = [client.publish(f"t/{n}", b"x", qos=1).mid for n in range(3)]
        client.loop_write()
        assert len(received_packets(broker, 3)) == 3
        acks = b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids)
        broker.sendall(publish_packet("in/a", b"1") + publish_packet("in/b", b"2") + acks)
        select.select([client_socket(client)], [], [], PATIENCE)
        client.loop_read()
        assert seen == [
            ("message", "in/a", b"1"),
            ("message", "in/b", b"2"),
            *(("ack", mid) for mid in mids),
        ]


def test_queued_packets_leave_in_order_and_qos_0_counts_as_sent():
    with scripted_broker() as (client, broker, _seen):
        infos = [client.publish(f"t/{n}", bytes([n]), qos=n % 2) for n in range(6)]
        client.loop_write()
        packets = received_packets(broker, 6)
        assert [(first >> 4, (first >> 1) & 3) for first, _ in packets] == [
            (3, n % 2) for n in range(6)
        ]
        assert [body[2:5] for _, body in packets] == [f"t/{n}".encode() for n in range(6)]
        assert all(info.is_published() for info in infos[0::2])  # QoS 0: once written
        assert not any(info.is_published() for info in infos[1::2])  # QoS 1: at its PUBACK


def test_messages_beyond_the_window_wait_for_a_puback():
    with scripted_broker(max_inflight=2) as (client, broker, seen):
        mids = [client.publish(f"t/{n}", b"x", qos=1).mid for n in range(4)]
        client.loop_write()
        assert len(received_packets(broker, 2)) == 2
        broker.sendall(b"\x40\x02" + mids[0].to_bytes(2, "big"))
        wait_until_read(client, lambda: seen == [("ack", mids[0])])
        client.loop_write()
        (third,) = received_packets(broker, 1)
        assert third[1][:5] == b"\x00\x03t/2"
