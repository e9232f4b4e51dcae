"""The forwarder: buffered readings to the broker, oldest first, each deleted from the buffer
only after the broker's PUBACK (QoS 1).

It connects with the dialect's will, publishes the dialect's birth, then pumps: up to
``max_inflight`` messages unacknowledged, acknowledged ones deleted in batches. After a
disconnect it reconnects with capped, jittered backoff (a new session each time) and resends
what is still in the buffer, so a duplicate (at least once) carries the same ``seq``.

Replay: what waits in the buffer when a session starts is the backlog. Readings stored after
that (live) go first, oldest first; the backlog drains behind them, oldest first, at most
``replay_rate`` messages a second, each marked historical by the dialect, so a broker and its
rate limits are not flooded after an outage. Order holds within live and within backlog.
Gateway events (drops, the buffer failing) go before either.

Nothing that goes wrong here ends the task, only cancellation does: the broker's failures are
reported through the uplink's health, the buffer's through the buffer's health (a full or
read-only disk, a locked file), both once per outage, and are retried with backoff, as the
pollers retry their devices. A row that no longer decodes is quarantined by the buffer as it is
read (moved aside, with a ``quarantined`` event for the fleet) and reported once as an incident
of the buffer's health: it never holds up the rows behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

from gateway.backoff import Backoff
from gateway.buffer import Buffer, BufferStats
from gateway.clock import Clock, epoch_ms
from gateway.commands import CommandHandler
from gateway.errors import StorageError, SubscriptionRefused, UplinkError
from gateway.events import BufferedEvent
from gateway.health import HealthRegistry, PartHealth, UplinkCounts
from gateway.readings import BufferedReading
from gateway.settings import MqttSettings
from gateway.upstream.dialect import Dialect
from gateway.upstream.homeassistant import Discovery
from gateway.upstream.messages import OutgoingMessage
from gateway.upstream.security import password_source, tls_settings
from gateway.upstream.session import MqttSession

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Acknowledged readings are deleted in batches: one commit per batch, not per message.
_DELETE_BATCH = 200
#: How long the pump waits for an acknowledgement or a new reading before it looks again.
_IDLE_WAIT = 1.0
#: How long a command's result may wait for its PUBACK before the next command is taken.
_RESULT_WAIT = 10.0


class Pace:
    """A token bucket on a monotonic clock: at most ``rate`` a second, bursts up to ``burst``.
    ``rate`` 0 means no limit. Pure, so it is tested with numbers, not by sleeping."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = max(1, burst)
        self._tokens = float(self._burst) if rate == 0 else 0.0
        self._at = now

    def take(self, wanted: int, now: float) -> int:
        """How many of ``wanted`` may go now (and count them as gone)."""
        if self._rate == 0:
            return wanted
        self._tokens = min(float(self._burst), self._tokens + (now - self._at) * self._rate)
        self._at = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def wait(self) -> float:
        """Seconds until one more may go."""
        if self._rate == 0 or self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) / self._rate


class Forwarder:
    """Owns the broker connection and the pump; run it with :meth:`run` in a task."""

    def __init__(  # noqa: PLR0917 - the parts it joins, in the order the service has them
        self,
        config: MqttSettings,
        dialect: Dialect,
        buffer: Buffer,
        clock: Clock,
        uplink_health: PartHealth,
        buffer_health: PartHealth,
        *,
        gateway_id: str,
        replay_rate: float = 0.0,
        health: HealthRegistry | None = None,
        health_interval: float = 0.0,
        commands: CommandHandler | None = None,
        after_birth: Sequence[OutgoingMessage] = (),
        discovery: Discovery | None = None,
    ) -> None:
        """``gateway_id`` names the client (``fieldgate-<gateway id>``) unless the config sets
        ``client_id``; the dialect has the wire's own copy. ``replay_rate``: messages a second
        at most for the backlog after an outage (0: no limit). ``health``: where the uplink's
        counts go and the health message's figures come from; with ``health_interval`` > 0
        the dialect's health message is published on connect and that often (seconds).
        ``commands``: take remote commands on each session (subscribed to its one topic).
        ``after_birth``: published once, after the first birth (a reload's outcome).
        ``discovery``: Home Assistant's sensors, announced with each device description."""
        self._config = config
        self._dialect = dialect
        self._buffer = buffer
        self._clock = clock
        self._uplink_health = uplink_health
        self._buffer_health = buffer_health
        self._client_id = config.client_id or f"fieldgate-{gateway_id}"
        self._replay_rate = replay_rate
        self._connect_backoff = Backoff(base=1.0, cap=config.reconnect_max)
        self._storage_backoff = Backoff(base=0.5, cap=config.reconnect_max)
        self._session: MqttSession | None = None
        #: Acknowledged by the broker, not yet deleted. Kept across sessions (and across failing
        #: deletes): what the broker has must not be sent again after a reconnect.
        self._acked: list[int] = []
        self._acked_events: list[int] = []
        #: An unexpected error (a bug) was logged with its traceback and has not cleared yet.
        self._fault: str | None = None
        self._health = health
        self._counts = health.uplink_counts if health is not None else UplinkCounts()
        self._health_interval = health_interval
        self._next_health = 0.0
        #: Message id -> when it was handed to the session (monotonic), for the latency.
        self._sent_at: dict[int, float] = {}
        self._commands = commands
        self._after_birth = list(after_birth)
        self._commands_refused: str | None = None
        self._discovery = discovery
        self._discovery_unsaved: str | None = None
        #: The pump's progress, for send_last: every live reading through this number that
        #: may go was published (held ones may not: see Buffer.oldest); what is in flight;
        #: an event set after each collection of acknowledgements.
        self._live_read_through = 0
        self._inflight: dict[int, int | BufferedEvent] = {}
        self._progress = asyncio.Event()

    @property
    def where(self) -> str:
        return f"{self._config.host}:{self._config.port}"

    async def run(self) -> None:
        """Connect, forward, and reconnect with backoff, until cancelled."""
        try:
            while True:
                await self._connect_and_forward()
                delay = self._connect_backoff.failed(self._clock.monotonic())
                await self._clock.sleep(delay)
        except asyncio.CancelledError:
            await self._delete_acked_once()
            raise

    async def send_last(self, timeout: float) -> None:
        """On a stop, once the pollers have stopped: wait, at most ``timeout`` seconds, until
        their last readings are committed and the broker acknowledged every live reading up to
        them, so that these leave before the goodbye instead of waiting for the next start.
        Returns at once without a connection; what is not acknowledged in time (a backlog
        behind the live readings, too) stays in the buffer, as always."""
        if self._session is None:
            return
        try:
            async with asyncio.timeout(timeout):
                newest = await self._buffer.settled()
                while self._session is not None:
                    self._progress.clear()  # before the check: no wake-up falls in between
                    if self._live_read_through >= newest and not any(
                        isinstance(sent, int) and sent <= newest for sent in self._inflight.values()
                    ):
                        return
                    await self._progress.wait()
        except TimeoutError:
            log.debug("the last readings were not all acknowledged before the stop's goodbye")

    async def say_goodbye(self, timeout: float) -> None:
        """Publish the dialect's goodbye and wait for its PUBACK, at most ``timeout`` seconds
        (the broker does not send the will after a clean DISCONNECT). Nothing happens when
        there is no connection; a goodbye that fails is only logged at debug level: the will
        says the same thing if the connection drops instead."""
        session = self._session
        if session is None:
            return
        goodbye = self._dialect.goodbye()
        try:
            await session.publish_and_wait(
                goodbye.topic, goodbye.payload, goodbye.qos, goodbye.retain, timeout=timeout
            )
        except UplinkError as exc:
            log.debug("could not say goodbye on %s: %s", goodbye.topic, exc)

    async def _connect_and_forward(self) -> None:
        """One session, from connect to its end; returns when it ended, for whatever reason."""
        try:
            async with MqttSession(
                self._config.host,
                self._config.port,
                self._config.keepalive,
                self._client_id,
                will=self._dialect.will(),
                # Room for the birth and the goodbye beside a full window of readings.
                max_inflight=self._config.max_inflight + 1,
                username=self._config.username,
                password=password_source(self._config),
                tls=tls_settings(self._config),
                protocol=self._config.protocol,
            ) as session:
                self._session = session
                self._connected()
                await self._forward(session)
        except UplinkError as exc:
            self._disconnected(exc)
        except Exception as exc:  # noqa: BLE001 - a bug costs a reconnect, not the process
            self._faulted(exc)
        finally:
            self._session = None

    def _connected(self) -> None:
        self._counts.connects += 1
        if self._fault is None:
            # After a fault, reconnecting is no success yet: the backoff keeps growing until
            # readings are delivered again, so a bug does not reconnect every second.
            self._connect_backoff.succeeded()
        if self._uplink_health.up is False:
            log.info("broker %s is reachable again; forwarding resumes", self.where)
        self._uplink_health.recovered()

    def _disconnected(self, exc: UplinkError) -> None:
        if self._uplink_health.up is not False:
            # The health line below carries the reason; this one says what the forwarder does.
            log.info(
                "broker %s unavailable; reconnecting with backoff (at most %g s apart)",
                self.where,
                self._config.reconnect_max,
            )
        self._uplink_health.failed(str(exc))

    def _faulted(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if self._fault is None:
            log.error(
                "the forwarder failed unexpectedly (a bug; it reconnects with backoff and "
                "retries; logged once until readings are delivered again)",
                exc_info=exc,
            )
        self._fault = text

    async def _forward(self, session: MqttSession) -> None:
        self._sent_at.clear()  # ids of an ended session are never acknowledged
        # Subscribed before the birth: whoever sees this session's birth (or a reload's
        # outcome after it) can send commands to it.
        handler = self._commands
        if handler is not None and not await self._subscribe_commands(session, handler):
            handler = None
        self._publish(session, self._dialect.birth())
        self._next_health = self._clock.monotonic()  # the first health message goes now
        for message in self._after_birth:
            self._publish(session, message)
        self._after_birth.clear()
        if self._discovery is not None:
            for message in self._discovery.withdrawn_devices():
                self._publish(session, message)
            await self._save_discovery()
        # Rows acknowledged on an earlier connection go first, or they would be read again.
        await self._delete_acked()
        await self._delete_acked_events()
        # message id -> a reading's sequence number, or the event it carries
        inflight: dict[int, int | BufferedEvent] = {}
        self._inflight = inflight  # for send_last
        commands = (
            asyncio.create_task(self._serve_commands(session, handler), name="commands")
            if handler is not None
            else None
        )
        try:
            await self._pump(session, inflight)
        finally:
            if commands is not None:
                commands.cancel()
                await asyncio.gather(commands, return_exceptions=True)
            # Events held only in memory that the broker did not acknowledge go next time.
            self._buffer.give_back(
                sent.event
                for sent in inflight.values()
                if isinstance(sent, BufferedEvent) and sent.event_id is None
            )

    async def _pump(  # noqa: PLR0912, PLR0915 - one loop: acks, events, live, backlog, deletes, wait
        self, session: MqttSession, inflight: dict[int, int | BufferedEvent]
    ) -> None:
        # Before anything that needs the file: a buffer that cannot even open has its
        # condition to tell (held in memory), and the first read below waits for the file.
        if not self._buffer.is_open:
            for event in await self._buffer.events(0, self._config.max_inflight):
                inflight[self._publish(session, self._dialect.event(event))] = event
        backlog_through = await self._storage("read", self._buffer.newest_seq)
        backlog_after = 0
        live_after = self._live_read_through = backlog_through
        events_after = 0
        look_for_events = True
        pace = Pace(self._replay_rate, self._config.max_inflight, self._clock.monotonic())
        released = self._buffer.released
        while True:
            await self._publish_health_when_due(session)
            if self._buffer.released != released:
                # Readings held until the clock synchronised were restamped behind both
                # cursors: read again from the start as backlog, skipping what is on its way.
                released = self._buffer.released
                backlog_after, backlog_through = 0, max(backlog_through, live_after)
            # Acknowledgements first: each one is room for another message.
            self._collect_acks(session, inflight)
            self._progress.set()
            room = self._config.max_inflight - len(inflight)
            sent = 0
            if room > 0 and (self._buffer.take_event_check() or look_for_events):
                events = await self._storage(
                    "read", partial(self._buffer.events, events_after, room)
                )
                look_for_events = len(events) >= room
                for event in events:
                    inflight[self._publish(session, self._dialect.event(event))] = event
                    if event.event_id is not None:
                        events_after = event.event_id
                room -= len(events)
                sent += len(events)
            if room > 0:
                known = self._buffer.newest_given
                live = await self._oldest(live_after, room)
                for buffered in live:
                    if (description := self._dialect.description(buffered)) is not None:
                        await self._describe(session, buffered, description)
                    message = self._dialect.reading(buffered)
                    inflight[self._publish(session, message)] = buffered.seq
                    live_after = buffered.seq
                if len(live) < room:  # all there was: through `known`, nothing is left to read
                    self._live_read_through = max(live_after, known)
                room -= len(live)
                sent += len(live)
            if room > 0 and backlog_after < backlog_through:
                allowed = pace.take(room, self._clock.monotonic())
                backlog = (
                    await self._oldest(backlog_after, allowed, backlog_through) if allowed else []
                )
                on_the_way = {seq for seq in inflight.values() if isinstance(seq, int)}
                on_the_way.update(self._acked)
                for buffered in backlog:
                    backlog_after = buffered.seq
                    if buffered.seq in on_the_way:
                        continue  # read again after a restamp; already sent
                    if (description := self._dialect.description(buffered)) is not None:
                        await self._describe(session, buffered, description)
                    message = self._dialect.reading(buffered, historical=True)
                    inflight[self._publish(session, message)] = buffered.seq
                if allowed and len(backlog) < allowed:
                    backlog_after = backlog_through  # the rest of the backlog is gone (limits)
                sent += len(backlog)
            if self._acked and (len(self._acked) >= _DELETE_BATCH or not sent):
                await self._delete_acked(partial(self._publish_held_events, session, inflight))
            if self._acked_events:
                await self._delete_acked_events()
            if sent:
                continue
            if inflight:
                await session.wait_for_acks(timeout=_IDLE_WAIT)
            else:
                paced = backlog_after < backlog_through
                wait = min(_IDLE_WAIT, pace.wait()) if paced else _IDLE_WAIT
                await self._buffer.wait_appended(timeout=wait)
            session.raise_if_lost()

    async def _subscribe_commands(self, session: MqttSession, handler: CommandHandler) -> bool:
        """Subscribe to the gateway's own command topic (and nothing else). A broker that
        refuses it (its ACL) costs the commands, logged once, not the readings."""
        try:
            await session.subscribe(handler.topic, qos=1)
        except SubscriptionRefused as exc:
            if self._commands_refused != str(exc):
                log.warning("remote commands are off for this connection: %s", exc)
            self._commands_refused = str(exc)
            return False
        self._commands_refused = None
        return True

    async def _serve_commands(self, session: MqttSession, handler: CommandHandler) -> None:
        """Take commands on this session until it ends; each gets its result before the next
        is read. Nothing here ends the session: a lost connection is the pump's to notice."""
        try:
            async for message in session.messages():
                if message.topic != handler.topic:
                    continue
                try:
                    reply = await handler.handle(message.payload, retained=message.retain)
                except Exception:  # a bug costs this command, never the session
                    log.exception("a remote command failed unexpectedly (a bug); it got no result")
                    continue
                await session.publish_and_wait(
                    reply.message.topic,
                    reply.message.payload,
                    reply.message.qos,
                    reply.message.retain,
                    timeout=_RESULT_WAIT,
                )
                if reply.then is not None:
                    await reply.then()
        except UplinkError:
            return

    async def _oldest(
        self, after_seq: int, limit: int, through_seq: int | None = None
    ) -> list[BufferedReading]:
        rows = await self._storage(
            "read", partial(self._buffer.oldest, after_seq, limit, through_seq)
        )
        # Rows that no longer decode were quarantined on the way: reported here, once each.
        for event in self._buffer.take_quarantined():
            self._buffer_health.incident(
                f"buffered reading seq {event.seq_first} was quarantined ({event.detail}); "
                "a 'quarantined' event tells the fleet, delivery goes on behind it"
            )
        return rows

    async def _describe(
        self, session: MqttSession, buffered: BufferedReading, description: OutgoingMessage
    ) -> None:
        """The device's retained description (the dialect's, when this session has not sent
        it yet) goes before a reading that needs it, with its Home Assistant sensors when
        discovery is on. Not tracked like a reading: a session that ends before its PUBACK
        sends it again after the next birth."""
        self._publish(session, description)
        if self._discovery is not None:
            for message in self._discovery.announce(buffered):
                self._publish(session, message)
            await self._save_discovery()

    async def _save_discovery(self) -> None:
        """Keep what Home Assistant was told, so a device that leaves the config is withdrawn
        after a restart; a failure is logged once (the sensors stay announced meanwhile)."""
        discovery = self._discovery
        if discovery is None or not discovery.changed:
            return
        try:
            await asyncio.to_thread(discovery.save)
        except OSError as exc:
            if self._discovery_unsaved is None:
                log.warning("Home Assistant discovery state not saved (%s); retried", exc)
            self._discovery_unsaved = str(exc)
        else:
            self._discovery_unsaved = None

    def _publish(self, session: MqttSession, message: OutgoingMessage) -> int:
        mid = session.publish(message.topic, message.payload, message.qos, message.retain)
        self._sent_at[mid] = self._clock.monotonic()
        return mid

    async def _publish_health_when_due(self, session: MqttSession) -> None:
        if self._health is None or self._health_interval <= 0:
            return
        now = self._clock.monotonic()
        if now < self._next_health:
            return
        self._next_health = now + self._health_interval
        try:
            figures: BufferStats | None = await self._buffer.stats()
        except StorageError:
            figures = None  # the disk fails: the message says so instead of waiting for it
        report = self._health.report(epoch_ms(self._clock), figures)
        self._publish(session, self._dialect.health(report))

    def _collect_acks(self, session: MqttSession, inflight: dict[int, int | BufferedEvent]) -> None:
        now = self._clock.monotonic()
        for mid in session.take_acknowledged():
            sent_at = self._sent_at.pop(mid, None)
            if sent_at is not None:
                self._counts.publish_latency.observe(now - sent_at)
            sent = inflight.pop(mid, None)  # None: a status or a description
            if isinstance(sent, int):
                self._acked.append(sent)
            elif sent is not None and sent.event_id is not None:
                self._acked_events.append(sent.event_id)

    async def _delete_acked_events(self) -> None:
        if not self._acked_events:
            return
        acked = list(self._acked_events)
        await self._storage("delete", partial(self._buffer.delete_events, acked))
        del self._acked_events[: len(acked)]

    async def _delete_acked(self, meanwhile: Callable[[], None] | None = None) -> None:
        """Delete what the broker acknowledged, retrying until the buffer takes it. No reading
        is published meanwhile, so however long the buffer fails, what waits in memory stays
        below a delete batch plus a window; ``meanwhile`` runs between tries."""
        if not self._acked:
            return
        acked = list(self._acked)
        await self._storage("delete", partial(self._buffer.delete, acked), meanwhile)
        del self._acked[: len(acked)]
        if self._fault is not None:
            log.info("the forwarder delivers again after %s", self._fault)
            self._fault = None
            self._connect_backoff.succeeded()

    async def _delete_acked_once(self) -> None:
        """On cancellation: one try, so a restart resends as little as possible."""
        if not self._acked:
            return
        try:
            await self._buffer.delete(list(self._acked))
        except Exception as exc:  # noqa: BLE001 - shutting down; the rows are only resent
            log.debug("acknowledged readings not deleted on shutdown: %s", exc)
        else:
            self._acked.clear()

    def _publish_held_events(
        self, session: MqttSession, inflight: dict[int, int | BufferedEvent]
    ) -> None:
        """While deletes wait for the disk: the buffer's conditions held in memory (a full
        disk, say) need no disk, so they still go, and the fleet learns why nothing else
        does. Their acknowledgements are collected as usual once the pump goes on."""
        held = self._buffer.take_held_events()
        for index, event in enumerate(held):
            try:
                inflight[self._publish(session, self._dialect.event(event))] = event
            except UplinkError:
                # The session ended: these go with the next (the pump's ending gives back
                # those already in flight).
                self._buffer.give_back(unsent.event for unsent in held[index:])
                raise

    async def _storage(
        self,
        what: str,
        operation: Callable[[], Awaitable[_T]],
        meanwhile: Callable[[], None] | None = None,
    ) -> _T:
        """Run a buffer operation until it succeeds. A failure is reported through the
        buffer's health (logged once per outage) and retried with backoff; the session stays
        up meanwhile (paho keeps it alive from the event loop, and acknowledgements wait in
        it); ``meanwhile`` runs after each failure."""
        while True:
            try:
                result = await operation()
            except StorageError as exc:
                self._buffer_health.failed(f"cannot {what} buffered readings: {exc}")
            except Exception as exc:  # a storage bug must not end forwarding either
                if self._buffer_health.up is not False:
                    log.exception("unexpected error from the buffer (a bug)")
                self._buffer_health.failed(
                    f"cannot {what} buffered readings: unexpected {type(exc).__name__}: {exc}"
                )
            else:
                self._storage_backoff.succeeded()
                self._buffer_health.recovered()
                return result
            if meanwhile is not None:
                meanwhile()
            await self._clock.sleep(self._storage_backoff.failed(self._clock.monotonic()))
