"""The asyncio TCP runtime: nodes in separate processes and hosts.

:class:`TcpEndpoint` is a :class:`~replication.transport.Transport` over TCP;
:class:`~replication.runtime.NodeRuntime` (re-exported here, where it used to
live) drives an unchanged sans-I/O :class:`~replication.transport.Node` with
it, as with any other transport.

On the wire every frame is a 4-byte big-endian length and then the body. The
length is checked against ``Limits.max_frame`` (between peers: the
replicator's frame size, 1 MiB by default, plus room for the MAC and the
snapshot layer's header) or ``Limits.max_client_frame`` (client requests and
answers) *before* the body is read (a ``StreamReader.readexactly`` of a
hostile length would otherwise buffer it), and the body must follow within
``Limits.read_timeout``.

Every connection opens with the handshake of ``replication.auth``: hellos with
fresh nonces, then proofs that bind each side's node id to the cluster key.
The side that accepted checks the dialler's proof before it sends its own,
and answers a proof that does not verify with the frame :data:`KEY_REFUSED`
before it closes, so a dialler can tell a wrong key (:class:`KeyRefused`)
from a connection dropped early (:class:`NotAdmitted`: closed with no word).
After it, every frame is sealed with a per-connection key and a sequence
number, so a forged, replayed, reordered or reflected frame is refused. A
connection that breaks any rule (a length over the cap, a zero-length or
truncated frame, a bad MAC, a replay, a header and then silence, a peer that
names itself differently than the node we dialled) is closed and counted, and
nothing of it reaches the node; the endpoint keeps serving the others.

Anyone who can reach the port can open connections, so the endpoint accepts
them itself and budgets them (:class:`Limits`): a connection is *half-open*
from its accept until it has proven it holds the cluster key, the TLS
handshake included, and half-open connections have a budget of their own
(with random early drop, as OpenSSH's MaxStartups, aimed at the address that
holds the most) and one deadline for the whole handshake. Authenticated
clients and peers count against separate limits, so a flood of one kind never
locks out the other. Refusals are counted in :class:`TcpStats` and logged at
most once per reason per ``Limits.log_interval``
(:class:`~replication.ratelog.RateLimitedLog`), never with a traceback.

Data flows one way per connection: a node sends to a peer over the connection
it opened to that peer (opened on the first send, reopened after a failure
with jittered exponential backoff) and receives over the connections its peers
opened to it. Frames wait in a bounded queue per peer; when it is full the
newest is dropped and counted, as gossip tolerates loss. With ``ssl`` contexts
the connections run over TLS (mutual, when the server context requires
client certificates); the handshake still runs inside it.

Cost: a frame costs O(size) to seal or open (HMAC-SHA256 at C speed) plus a
socket write or read; memory is bounded by the queues and ``max_frame``; a
connection refused or dropped early costs an accept and a close, and
admitting one O(addresses holding half-open connections) once over
``start``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import socket
import ssl
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from random import Random, SystemRandom
from typing import Any

from crdts.errors import PeerError, ProtocolError
from replication.auth import AuthError, Handshake, Hello, Session
from replication.messages import DEFAULT_FRAME, MAX_FRAME
from replication.ratelog import RateLimitedLog
from replication.runtime import NodeRuntime  # re-exported: it lived here
from replication.transport import FrameHandler, PeerMisbehaved

__all__ = [
    "KEY_REFUSED",
    "OVERHEAD",
    "Channel",
    "FrameReader",
    "FrameTooLarge",
    "KeyRefused",
    "Limits",
    "NodeRuntime",
    "NotAdmitted",
    "PeerClosed",
    "PeerMisbehaved",
    "TcpEndpoint",
    "TcpStats",
    "connect",
    "read_frame",
]

Address = tuple[str, int]
log = logging.getLogger("crdtkit.tcp")

_LENGTH = 4
#: A sealed frame's overhead (sequence number, MAC) and the snapshot layer's
#: header, on top of the largest replicator frame.
OVERHEAD = _OVERHEAD = 64 * 1024


class FrameTooLarge(ProtocolError):
    """A length prefix over the cap: refused before the body was read."""


class PeerClosed(PeerError):
    """The stream ended cleanly, between frames."""


class NotAdmitted(PeerClosed):
    """The node closed the connection before its hello: it dropped it early
    (too many half-open connections, see :class:`Limits`) or is stopping.
    Dialling again later may succeed."""


class KeyRefused(AuthError):
    """The node answered our proof with :data:`KEY_REFUSED`, not its own:
    it does not hold our cluster key."""


class _OverLimit(PeerError):
    """An authenticated connection over the limit of its kind."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds an endpoint enforces on the connections it accepts and the
    frames it reads.

    A connection is *half-open* from its accept until it has proven it holds
    the cluster key (the TLS handshake, with TLS, included). Anyone who can
    reach the port can open one, and each costs a file descriptor, so:

    - half-open connections have their own budget, ``startups``, OpenSSH's
      MaxStartups ``start:rate:full``: with ``start`` or more half-open, each
      new connection makes the endpoint drop one with probability ``rate``
      percent, rising linearly to 100% at ``full`` (so never more than
      ``full``). The one dropped is the newcomer if its address already holds
      the most half-open connections, else the oldest of the address that
      does: a flood from a few addresses pays for itself, and an honest
      newcomer from elsewhere gets in. An address holding
      ``startups_per_address`` loses its own oldest to its newcomer (silent
      connections cannot lock out their own address either). IPv6 addresses
      count by /64.
    - ``handshake_timeout`` is one deadline for the whole handshake, TLS
      included, from accept: a handshake trickled a byte at a time ends with
      it, whatever it sends.
    - once authenticated, a connection leaves the half-open budget and counts
      against ``max_clients`` or ``max_peers`` (inbound), separate limits, so
      a flood of clients never locks out a peer, nor the other way round.

    Inbound, the endpoint holds at most ``full + max_clients + max_peers``
    connections (256 by default), plus one per peer it dials: keep that under
    the process's file limit (``ulimit -n``; the endpoint warns at start if
    it is not). Refusals are logged at most once per reason per
    ``log_interval`` seconds, with a count of the rest.

    >>> Limits().startups, Limits(handshake_timeout=0.5).handshake_timeout
    ((10, 30, 64), 0.5)
    >>> Limits(startups=(10, 30, 5))
    Traceback (most recent call last):
    ...
    ValueError: startups is start:rate:full with 1 <= start <= full and 0 <= rate ...
    """

    #: Between peers: a replicator's frame (``Replicator(max_frame=...)``,
    #: the same on every node) plus overhead. A node whose replicator sends
    #: larger frames needs ``Limits(max_frame=its max_frame + OVERHEAD)``.
    max_frame: int = DEFAULT_FRAME + _OVERHEAD
    #: Client requests and answers (a keyspace, a recording): larger.
    max_client_frame: int = MAX_FRAME + _OVERHEAD
    startups: tuple[int, int, int] = (10, 30, 64)  # half-open: start, rate (%), full
    startups_per_address: int = 8  # half-open from one address (an IPv6 /64)
    max_clients: int = 128  # authenticated client connections at once
    max_peers: int = 64  # authenticated inbound peer connections at once
    handshake_timeout: float = 5.0  # from accept to authenticated, TLS included
    read_timeout: float = 5.0  # for a frame's body once its length arrived
    idle_timeout: float = 300.0  # for the next frame's length
    queue: int = 4096  # frames waiting per peer
    backoff: tuple[float, float] = (0.05, 5.0)  # first and longest reconnect wait
    log_interval: float = 10.0  # at most one line per refusal reason per interval

    def __post_init__(self) -> None:
        start, rate, full = self.startups
        if not (1 <= start <= full and 0 <= rate <= 100):
            raise ValueError("startups is start:rate:full with 1 <= start <= full and "
                             f"0 <= rate <= 100, got {self.startups}")
        counts = (self.startups_per_address, self.max_clients, self.max_peers, self.queue)
        if min(counts) < 1:
            raise ValueError("connection limits and the queue are at least 1")
        if not min(self.handshake_timeout, self.read_timeout, self.idle_timeout,
                   self.log_interval) > 0:
            raise ValueError("timeouts and the log interval are positive")

    def drop_chance(self, half_open: int) -> float:
        """The probability that a new connection makes the endpoint drop one,
        with ``half_open`` connections half-open (OpenSSH's MaxStartups).

        >>> [Limits(startups=(10, 30, 60)).drop_chance(n) for n in (9, 10, 35, 60)]
        [0.0, 0.3, 0.65, 1.0]

        Cost: O(1).
        """
        start, rate, full = self.startups
        if half_open < start:
            return 0.0
        if half_open >= full:
            return 1.0
        return (rate + (100 - rate) * (half_open - start) / (full - start)) / 100


@dataclass(slots=True)
class TcpStats:
    """What an endpoint saw: every refusal is counted by its reason."""

    accepted: int = 0
    sent: int = 0
    received: int = 0
    bytes_sent: int = 0  # on the wire, with length prefixes and MACs (not TLS)
    bytes_received: int = 0
    dropped: int = 0  # frames for unknown peers or over a full queue
    refused: Counter[str] = field(default_factory=Counter)  # connections closed, by reason


async def read_frame(
    reader: asyncio.StreamReader, max_frame: int, header_timeout: float, body_timeout: float
) -> bytes:
    """One length-prefixed frame: the length is checked against ``max_frame``
    before the body is read, and each part must arrive within its timeout.
    PeerClosed if the stream ends cleanly before a frame begins;
    ``IncompleteReadError`` if it ends inside one.

    >>> async def demo():
    ...     reader = asyncio.StreamReader()
    ...     reader.feed_data(b"\\x00\\x00\\x00\\x02hi" + b"\\xff\\xff\\xff\\xff")
    ...     first = await read_frame(reader, 16, 1.0, 1.0)
    ...     try:
    ...         await read_frame(reader, 16, 1.0, 1.0)
    ...     except FrameTooLarge as exc:
    ...         return first, str(exc)
    >>> asyncio.run(demo())
    (b'hi', 'a frame of 4294967295 bytes is over the limit of 16')

    Cost: O(length) once the length is accepted.
    """
    # asyncio.timeout, not wait_for: wait_for makes a task and a timer per
    # call, about 45 us a frame more on both sides of every request.
    try:
        async with asyncio.timeout(header_timeout):
            head = await reader.readexactly(_LENGTH)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        raise PeerClosed("the peer closed the connection between frames") from None
    length = _length(head, max_frame)
    async with asyncio.timeout(body_timeout):
        return await reader.readexactly(length)


def _length(head: bytes | bytearray, max_frame: int) -> int:
    length = int.from_bytes(head[:_LENGTH], "big")
    if length > max_frame:
        raise FrameTooLarge(f"a frame of {length} bytes is over the limit of {max_frame}")
    return length


#: Bytes a FrameReader asks for at a time (more only for a frame's remainder).
_CHUNK = 64 * 1024


class FrameReader:
    """The frames of a stream, as :func:`read_frame` reads them, cut from
    chunks: a peer's pipelined frames cost one read and one deadline per
    chunk, not two of each per frame. It reads ahead, so once it is used
    the stream is its alone (the handshake reads frame by frame before).

    >>> async def demo():
    ...     reader = asyncio.StreamReader()
    ...     reader.feed_data(b"\\x00\\x00\\x00\\x02hi\\x00\\x00\\x00\\x01!")
    ...     reader.feed_eof()
    ...     frames = FrameReader(reader)
    ...     got = [await frames.next(16, 1.0, 1.0) for _ in range(2)]
    ...     try:
    ...         await frames.next(16, 1.0, 1.0)
    ...     except PeerClosed:
    ...         return got
    >>> asyncio.run(demo())
    [b'hi', b'!']

    Cost: O(length) per frame, once its length is accepted.
    """

    __slots__ = ("_buffer", "_deadline", "_expired", "_loop", "_reader", "_timer", "_waiting")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buffer = bytearray()  # read, not yet taken as frames
        # Deadlines by one timer that moves lazily (see _read), not one
        # asyncio.timeout per read: that cost each side of a request and
        # its answer about 10 us (a timer made and cancelled, two lookups
        # of the running loop, each a getpid() on Python 3.11).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline = 0.0  # of the read waiting, if one is
        self._timer: asyncio.TimerHandle | None = None  # due at or before it
        self._waiting: asyncio.Task[Any] | None = None  # the task in a read
        self._expired: asyncio.Task[Any] | None = None  # cancelled by its deadline

    @property
    def buffered(self) -> int:
        """Bytes read ahead, not yet taken as frames.

        >>> async def demo():
        ...     reader = asyncio.StreamReader()
        ...     reader.feed_data(b"\\x00\\x00\\x00\\x01!\\x00\\x00")
        ...     frames = FrameReader(reader)
        ...     return await frames.next(16, 1.0, 1.0), frames.buffered
        >>> asyncio.run(demo())
        (b'!', 2)

        Cost: O(1)."""
        return len(self._buffer)

    async def next(self, max_frame: int, header_timeout: float, body_timeout: float) -> bytes:
        """The next frame's body; the errors and timeouts of :func:`read_frame`.

        >>> async def demo():
        ...     reader = asyncio.StreamReader()
        ...     reader.feed_data(b"\\xff\\xff\\xff\\xff")
        ...     try:
        ...         await FrameReader(reader).next(16, 1.0, 1.0)
        ...     except FrameTooLarge as exc:
        ...         return str(exc)
        >>> asyncio.run(demo())
        'a frame of 4294967295 bytes is over the limit of 16'

        Cost: O(length) once the length is accepted.
        """
        buffer = self._buffer
        while True:
            if len(buffer) >= _LENGTH:
                end = _LENGTH + _length(buffer, max_frame)
                if len(buffer) >= end:
                    body = bytes(buffer[_LENGTH:end])
                    del buffer[:end]
                    return body
                want = end - len(buffer)
            else:
                want = _LENGTH - len(buffer)
            data = await self._read(max(want, _CHUNK), body_timeout if buffer else header_timeout)
            if not data:
                self.close()
                if buffer:
                    raise asyncio.IncompleteReadError(bytes(buffer), None)
                raise PeerClosed("the peer closed the connection between frames")
            buffer += data

    async def _read(self, size: int, timeout: float) -> bytes:
        # What asyncio.timeout does, with one timer kept for every read: it
        # is moved only when a deadline comes sooner than it, and when it
        # fires before the deadline of the read then waiting.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = self._deadline = loop.time() + timeout
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(deadline, self._expire)
        task = self._waiting = asyncio.current_task(loop)
        try:
            return await self._reader.read(size)
        except asyncio.CancelledError:
            if self._expired is task and task is not None:
                self._expired = None
                if task.uncancel() == 0:  # no one else cancelled it: our deadline
                    raise TimeoutError from None
            raise
        finally:
            self._waiting = None

    def _expire(self) -> None:
        timer, self._timer = self._timer, None
        task, loop = self._waiting, self._loop
        if task is None or loop is None:  # no read waits: the next one sets its timer
            return
        if timer is not None and self._deadline > timer.when():  # a later read's
            self._timer = loop.call_at(self._deadline, self._expire)
            return
        self._expired = task
        task.cancel()

    def close(self) -> None:
        """Drop the timer of its deadlines (the stream ended, or is given
        up); a later :meth:`next` sets it again.

        >>> async def demo():
        ...     reader = asyncio.StreamReader()
        ...     frames = FrameReader(reader)
        ...     reader.feed_data(b"\\x00\\x00\\x00\\x01!")
        ...     got = await frames.next(16, 1.0, 1.0)
        ...     frames.close()
        ...     return got
        >>> asyncio.run(demo())
        b'!'

        Cost: O(1)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _write_frame(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(len(body).to_bytes(_LENGTH, "big") + body)


class _HalfOpen:
    """An accepted connection that has not authenticated yet."""

    __slots__ = ("conn", "host", "number", "source", "stage", "started", "task")

    def __init__(self, conn: socket.socket, host: str, source: str, number: int) -> None:
        self.conn, self.host, self.source, self.number = conn, host, source, number
        self.started = False  # its task has begun (and closes what it opened)
        # How far it got: SILENT (nothing arrived yet), SPOKE (bytes arrived:
        # its TLS handshake or hello under way), HELLO (its hello arrived).
        self.stage = _SILENT
        self.task: asyncio.Task[None] | None = None


_SILENT, _SPOKE, _HELLO = 0, 1, 2


def _source(host: str) -> str:
    """What a half-open budget is kept for: an IPv4 address, or an IPv6 /64
    (one host commonly holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return host


class TcpEndpoint:
    """One node's TCP endpoint: a :class:`~replication.transport.Transport`.

    ``peers`` maps node ids to the addresses to dial; ``key`` is the cluster
    key (see ``replication.auth``). ``rng`` jitters the reconnect backoff;
    the handshake's nonces come from ``os.urandom``, as they must be
    unpredictable, and so does the choice of connections to drop early
    unless ``drop_rng`` is given (tests pass a seeded one). Frames that
    arrive go to ``on_frame(sender, frame)`` if given, else wait for
    :meth:`receive`. A connection that authenticates in the ``client`` role
    is handed to ``await on_client(channel)`` (a :class:`Channel`, closed
    when it returns), or refused without one. Connections are budgeted as
    :class:`Limits` says.

    >>> async def demo():
    ...     key = bytes(32)
    ...     a = TcpEndpoint("a", key, rng=Random(1))
    ...     b = TcpEndpoint("b", key, rng=Random(2))
    ...     await a.start(); await b.start()
    ...     a.add_peer("b", b.address)
    ...     a.send("b", b"hello")
    ...     for _ in range(200):  # bounded: at most 2 s
    ...         got = b.receive()
    ...         if got:
    ...             break
    ...         await asyncio.sleep(0.01)
    ...     await a.close(); await b.close()
    ...     return got
    >>> asyncio.run(demo())
    [('a', b'hello')]

    Cost: see the module docstring.
    """

    def __init__(
        self,
        node_id: str,
        key: bytes,
        *,
        rng: Random,
        listen: Address = ("127.0.0.1", 0),
        peers: Mapping[str, Address] | None = None,
        limits: Limits | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        on_frame: FrameHandler | None = None,
        on_client: Callable[[Channel], Awaitable[None]] | None = None,
        drop_rng: Random | None = None,
    ) -> None:
        self._node = node_id
        self._key = key
        self._rng = rng
        # Which connection a flood costs is an adversary's question: by
        # default the answer comes from the OS, not a seed one could learn.
        self._drop_rng = drop_rng if drop_rng is not None else SystemRandom()
        self._listen = listen
        self._peers: dict[str, Address] = dict(peers or {})
        self._any_name: set[str] = set()  # seeds: any authenticated node may answer
        self.limits = limits or Limits()
        self._server_ssl = server_ssl
        self._client_ssl = client_ssl
        self.on_frame: FrameHandler | None = on_frame
        self.on_client = on_client
        self._inbox: list[tuple[str, bytes]] = []
        self._queues: dict[str, deque[bytes]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # Half-open connections, oldest first, and by source address.
        self._half_open: dict[int, _HalfOpen] = {}
        self._by_source: dict[str, list[_HalfOpen]] = {}
        self._accepts = 0
        self._clients = 0  # authenticated client connections open
        self._inbound = 0  # authenticated peer connections open
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False
        self._log = RateLimitedLog(log, time.monotonic, interval=self.limits.log_interval)
        self.stats = TcpStats()

    @property
    def node_id(self) -> str:
        """This endpoint's node id. Cost: O(1)."""
        return self._node

    @property
    def address(self) -> Address:
        """The address it listens on (the real port when asked for port 0).
        Cost: O(1)."""
        if not self._listeners:
            return self._listen
        host, port = self._listeners[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def half_open(self) -> int:
        """Connections accepted and not yet authenticated. Cost: O(1)."""
        return len(self._half_open)

    def add_peer(self, node_id: str, address: Address, *, any_name: bool = False) -> None:
        """Dial ``node_id`` at ``address`` from now on. With ``any_name``,
        ``node_id`` is only this endpoint's name for the address (a seed,
        whose node id a joiner does not know yet), and whichever node answers
        there is accepted, once it has proven it holds the cluster key.
        Cost: O(1)."""
        self._peers[node_id] = address
        if any_name:
            self._any_name.add(node_id)
        else:
            self._any_name.discard(node_id)

    async def start(self) -> None:
        """Listen. Cost: O(1)."""
        self._loop = asyncio.get_running_loop()
        # Accepted here rather than by asyncio.start_server: its TLS
        # handshake ran before any callback, so TLS connections escaped every
        # count (file descriptors reached 1,003 of 1,024), and its accept
        # logged a traceback for each failure once descriptors ran out.
        self._listeners = await _listening(self._loop, *self._listen)
        for listener in self._listeners:
            self._spawn(self._accepting(listener))
        self._spawn(self._flushing())
        self._check_file_limit()

    async def close(self) -> None:
        """Stop listening and close every connection. Cost: O(connections)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for entry in list(self._half_open.values()):  # never started
            self._forget(entry)
            entry.conn.close()
        for listener in self._listeners:
            listener.close()
        self._log.flush(f"{self._node}: ", force=True)

    # -- the Transport surface ---------------------------------------------------------

    def send(self, destination: str, frame: bytes) -> None:
        """Queue ``frame`` for ``destination``; never blocks or raises (an
        unknown peer or a full queue drops it, counted). Cost: O(1)."""
        if destination not in self._peers or self._closed or self._loop is None:
            self.stats.dropped += 1
            return
        queue = self._queues.get(destination)
        if queue is None:
            queue = self._queues[destination] = deque()
            self._wakeups[destination] = asyncio.Event()
            self._spawn(self._dial(destination))
        if len(queue) >= self.limits.queue:
            self.stats.dropped += 1
            return
        queue.append(frame)
        self._wakeups[destination].set()

    def receive(self) -> list[tuple[str, bytes]]:
        """The frames that arrived since the last call (when there is no
        ``on_frame``). Cost: O(frames)."""
        out, self._inbox = self._inbox, []
        return out

    # -- outbound --------------------------------------------------------------------

    def _spawn(self, work: Coroutine[object, object, None]) -> asyncio.Task[None]:
        # The endpoint's own loop, not the running one: ``send`` may be called
        # from synchronous code between runs of the loop (as a Transport).
        assert self._loop is not None  # send() checks it
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _dial(self, peer: str) -> None:
        failures = 0
        while not self._closed:
            writer: asyncio.StreamWriter | None = None
            try:
                host, port = self._peers[peer]
                async with asyncio.timeout(self.limits.handshake_timeout):
                    reader, connected = await asyncio.open_connection(
                        host,
                        port,
                        ssl=self._client_ssl,
                        server_hostname=host if self._client_ssl else None,
                    )
                    writer = connected
                    self._writers.add(connected)
                    session = await self._handshake(reader, connected, initiator=True)
                if session.peer.node != peer and peer not in self._any_name:
                    raise AuthError(f"dialled {peer!r}, but {session.peer.node!r} answered")
                log.info("%s: connected to %s%s", self._node, peer,
                         f" after {failures} failed attempts" if failures else "")
                failures = 0
                await self._pump(peer, session, connected)
            except asyncio.CancelledError:
                raise
            except (AuthError, FrameTooLarge) as exc:
                self.stats.refused[_reason(exc)] += 1
                self._log.warning(f"dialling: {_reason(exc)}", "%s: dialling %s: %s",
                                  self._node, peer, exc)
            except (OSError, PeerClosed, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
                pass  # the peer is down, busy or went away: try again later
            finally:
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
            failures += 1
            first, longest = self.limits.backoff
            wait = min(longest, first * 2 ** min(failures, 30))
            await asyncio.sleep(wait * (0.5 + self._rng.random()))

    async def _pump(self, peer: str, session: Session, writer: asyncio.StreamWriter) -> None:
        queue, wakeup = self._queues[peer], self._wakeups[peer]
        while not self._closed:
            while queue:
                # Sealed at the moment it goes out: a frame lost with a broken
                # connection is lost (gossip repairs it), not resent out of order.
                sealed = session.seal(queue.popleft())
                _write_frame(writer, sealed)
                self.stats.sent += 1
                self.stats.bytes_sent += _LENGTH + len(sealed)
            await writer.drain()
            wakeup.clear()
            if not queue:
                await wakeup.wait()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, initiator: bool
    ) -> Session:
        limit = self.limits.handshake_timeout
        return await _handshake(
            reader, writer, self._key, self._node, role="peer", limit=limit, initiator=initiator
        )

    # -- inbound ---------------------------------------------------------------------

    async def _accepting(self, listener: socket.socket) -> None:
        assert self._loop is not None
        loop = self._loop
        while not self._closed:
            try:
                conn, peername = await loop.sock_accept(listener)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:
                # Out of file descriptors or buffers (EMFILE, ENFILE, ENOBUFS,
                # ENOMEM): the listening socket stays readable, so accepting
                # again at once would spin. One line, not a traceback each.
                self.stats.refused["out of resources"] += 1
                self._log.warning("out of resources", "%s: cannot accept connections: %s",
                                  self._node, exc)
                await asyncio.sleep(0.1)
                continue
            host = str(peername[0]) if isinstance(peername, tuple) else "?"
            self._admit(conn, host)
            # sock_accept returns at once while connections wait: let the
            # connections already admitted run between two accepts.
            await asyncio.sleep(0)

    def _admit(self, conn: socket.socket, host: str) -> None:
        limits = self.limits
        source = _source(host)
        mine = self._by_source.get(source, [])
        chance = limits.drop_chance(len(self._half_open))
        if len(mine) >= limits.startups_per_address:
            victim = min(mine, key=lambda e: (e.stage, e.number))
            self._drop(victim, "evicted", "its address opened more")
        elif chance and self._drop_rng.random() < chance:
            # Someone goes. The newcomer, if its address already holds the
            # most; else, of the addresses that hold the most, the connection
            # that got least far (silent ones first: honest ones speak at
            # once), the oldest of those.
            top = max(len(held) for held in self._by_source.values())
            if mine and len(mine) >= top:
                self.stats.refused["dropped early"] += 1
                self._log.warning("dropped early", "%s: dropped a connection from %s early: "
                                  "%d half-open, %d of them from there", self._node, host,
                                  len(self._half_open), len(mine))
                conn.close()
                return
            by_source = self._by_source
            victim = min(self._half_open.values(),
                         key=lambda e: (-len(by_source[e.source]), e.stage, e.number))
            self._drop(victim, "evicted", "too many half-open")
        self._accepts += 1
        entry = _HalfOpen(conn, host, source, self._accepts)
        self._half_open[entry.number] = entry
        self._by_source.setdefault(source, []).append(entry)
        self.stats.accepted += 1
        entry.task = self._spawn(self._incoming(entry))

    def _drop(self, entry: _HalfOpen, reason: str, why: str) -> None:
        self._forget(entry)
        self.stats.refused[reason] += 1
        self._log.warning(reason, "%s: closed a half-open connection from %s for a newer one: "
                          "%s", self._node, entry.host, why)
        if not entry.started:  # cancelled before its first step: its finally never runs
            entry.conn.close()
        if entry.task is not None:
            entry.task.cancel()

    def _forget(self, entry: _HalfOpen) -> None:
        if self._half_open.pop(entry.number, None) is None:
            return
        held = self._by_source[entry.source]
        held.remove(entry)
        if not held:
            del self._by_source[entry.source]

    async def _incoming(self, entry: _HalfOpen) -> None:
        entry.started = True
        assert self._loop is not None
        loop, limits, host = self._loop, self.limits, entry.host
        transport: asyncio.Transport | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                # One deadline for everything before authentication, the TLS
                # handshake included (its own timeout is a backstop).
                async with asyncio.timeout(limits.handshake_timeout):
                    await _readable(loop, entry.conn)
                    entry.stage = _SPOKE
                    reader = asyncio.StreamReader(loop=loop)
                    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: protocol,
                        entry.conn,
                        ssl=self._server_ssl,
                        ssl_handshake_timeout=limits.handshake_timeout + 1.0
                        if self._server_ssl
                        else None,
                    )
                    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
                    self._writers.add(writer)
                    session = await _handshake(
                        reader, writer, self._key, self._node, role="peer",
                        limit=limits.handshake_timeout, initiator=False,
                        on_hello=functools.partial(setattr, entry, "stage", _HELLO),
                    )
            finally:
                self._forget(entry)
            peer = session.peer.node
            if session.peer.role == "client" and self.on_client is not None:
                if self._clients >= limits.max_clients:
                    raise _OverLimit("too many clients")
                self._clients += 1
                try:
                    await self.on_client(Channel(reader, writer, session, limits))
                finally:
                    self._clients -= 1
                return
            if peer == self._node or session.peer.role != "peer":
                raise AuthError(f"a peer may not call itself {peer!r} ({session.peer.role})")
            if self._inbound >= limits.max_peers:
                raise _OverLimit("too many peers")
            self._inbound += 1
            try:
                await self._receiving(peer, session, reader)
            finally:
                self._inbound -= 1
        except asyncio.CancelledError:
            raise
        except PeerClosed:
            pass  # closed cleanly between frames
        except (
            AuthError,
            FrameTooLarge,
            PeerMisbehaved,
            _OverLimit,
            TimeoutError,
            asyncio.IncompleteReadError,
            OSError,
        ) as exc:
            why, detail = _reason(exc), str(exc)
            self.stats.refused[why] += 1
            self._log.warning(why, "%s: closed a connection from %s: %s", self._node, host,
                              f"{why} ({detail})" if detail and detail != why else why)
        finally:
            if writer is not None:
                self._writers.discard(writer)
                writer.close()
            elif transport is not None:
                transport.abort()
            else:
                entry.conn.close()  # no transport took it over

    async def _receiving(self, peer: str, session: Session, reader: asyncio.StreamReader) -> None:
        limits = self.limits
        frames = FrameReader(reader)
        while not self._closed:
            sealed = await frames.next(limits.max_frame, limits.idle_timeout, limits.read_timeout)
            body = session.open(sealed)
            self.stats.received += 1
            self.stats.bytes_received += _LENGTH + len(sealed)
            if self.on_frame is None:
                self._inbox.append((peer, body))
            else:
                self.on_frame(peer, body)

    async def _flushing(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.limits.log_interval)
            self._log.flush(f"{self._node}: ")

    def _check_file_limit(self) -> None:
        full = self.limits.startups[2]
        need = full + self.limits.max_clients + self.limits.max_peers + len(self._peers) + 32
        try:
            import resource

            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ImportError, OSError, ValueError):
            return
        if soft != resource.RLIM_INFINITY and soft < need:
            log.warning("%s: the connection limits allow about %d open files, but this process "
                        "may open %d (ulimit -n): lower the limits or raise it", self._node,
                        need, soft)


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    """Wait until ``conn`` has bytes to read (or its end)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(conn.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())


async def _listening(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Listening sockets for ``host`` (every address it resolves to, as
    ``asyncio.start_server`` binds them) and ``port``."""
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            listener = socket.socket(family, kind, proto)
            listeners.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            listener.bind(address)
            # A deep backlog: a SYN the kernel drops is retried only after a
            # second, and a flood must not cost an honest dialler that second.
            listener.listen(1024)
            listener.setblocking(False)
            if port == 0:  # the other addresses take the same port
                port = listener.getsockname()[1]
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (FrameTooLarge, "frame over the limit"),
    (TimeoutError, "timed out"),
    (asyncio.IncompleteReadError, "truncated frame"),
    (AuthError, "failed authentication"),
    (PeerMisbehaved, "refused by the node"),
    (ssl.SSLError, "TLS"),
)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _OverLimit):
        return str(exc)
    return next((why for kind, why in _REASONS if isinstance(exc, kind)), "connection error")


class Channel:
    """A two-way authenticated connection: what a client holds, and what a
    node's ``on_client`` gets. Frames are sealed both ways.

    Cost: O(size) per frame, as for peers.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Session,
        limits: Limits,
    ) -> None:
        self._reader, self._writer, self._session, self._limits = reader, writer, session, limits
        self._loop = asyncio.get_running_loop()
        # asyncio's socket transports read up to 256 KiB at a time: a buffer
        # that glibc maps and unmaps for every read (over its 128 KiB
        # threshold), a fifth of a client's CPU per answer. The frame
        # reader asks for 64 KiB at a time anyway.
        transport = writer.transport
        if getattr(transport, "max_size", 0) > _CHUNK:
            transport.max_size = _CHUNK  # type: ignore[attr-defined]
        # Frames sealed in this turn of the event loop after its first (sent
        # at once), for one write at its end; None: none sent in this turn.
        self._out: list[bytes] | None = None
        self._frames = FrameReader(reader)

    @property
    def peer(self) -> Hello:
        """Who is at the other end (authenticated). Cost: O(1)."""
        return self._session.peer

    @property
    def buffered(self) -> bool:
        """Whether bytes of a next frame were read already (:meth:`recv`
        may return without waiting). Cost: O(1)."""
        return self._frames.buffered > 0

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next frame's body; PeerClosed at a clean end, AuthError,
        FrameTooLarge, TimeoutError or IncompleteReadError otherwise.
        Cost: O(frame size)."""
        limits = self._limits
        idle = limits.idle_timeout if timeout is None else timeout
        sealed = await self._frames.next(limits.max_client_frame, idle, limits.read_timeout)
        return self._session.open(sealed)

    async def send(self, body: bytes, *, alone: bool = False) -> None:
        """Seal and send ``body`` (as :meth:`send_nowait`), waiting while
        the connection's buffer is full. Cost: O(len(body))."""
        self.send_nowait(body, alone=alone)
        await self._writer.drain()

    def send_nowait(self, body: bytes, *, alone: bool = False) -> None:
        """Seal ``body`` and send it: the first frame of a turn of the event
        loop at once, the others sealed in that turn together at its end, in
        one write (a pipelining peer's answers would cost a system call
        each). Writing the first at once saves an answer, and a request, a
        turn of the loop each way. ``alone``: the caller expects no other
        frame in this turn (a client with no other call waiting, a node
        answering a connection's last request in flight), so none waits for
        the turn's end at all (which cost a turn of the loop per frame).
        Frames go out in the order sealed; on a closed connection they are
        dropped.
        Cost: O(len(body))."""
        framed = self._session.seal_frame(body)
        out = self._out
        if out is not None:  # a frame went out in this turn: wait for its end
            out.append(framed)
            return
        if not alone:
            self._out = []
            self._loop.call_soon(self._flush)
        if not self._writer.is_closing():
            self._writer.write(framed)

    def _flush(self) -> None:
        out, self._out = self._out, None
        if out and not self._writer.is_closing():
            self._writer.write(b"".join(out))

    def close(self) -> None:
        """Send what is sealed, then close the connection. Cost: O(1)."""
        self._flush()
        self._frames.close()
        self._writer.close()


async def connect(
    address: Address,
    key: bytes,
    name: str,
    *,
    role: str = "client",
    ssl_context: ssl.SSLContext | None = None,
    limits: Limits | None = None,
    rng: Random | None = None,
) -> Channel:
    """Dial a node at ``address`` and authenticate as ``name`` in ``role``,
    within ``limits.handshake_timeout`` in all. A busy node may drop the
    connection before its hello (random early drop, :class:`Limits`): it is
    dialled again after a wait doubling from 10 ms, jittered by ``rng``
    (seeded from the OS if None), until the deadline.

    Raises NotAdmitted if the node dropped every attempt, KeyRefused if it
    closed the connection on our proof (it holds another cluster key),
    AuthError if its proof does not verify, TimeoutError at the deadline,
    or the socket's OSError (ConnectionRefusedError: nothing listens there;
    ssl.SSLError).

    >>> async def nobody_there():
    ...     try:
    ...         await connect(("127.0.0.1", 1), bytes(32), "me")
    ...     except OSError as exc:
    ...         return type(exc).__name__
    >>> asyncio.run(nobody_there())
    'ConnectionRefusedError'

    Cost: one round trip of the handshake (more if the node drops it).
    """
    limits = limits or Limits()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.handshake_timeout
    wait = 0.01
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                return await _connect_once(
                    address, key, name, role=role, ssl_context=ssl_context, limits=limits
                )
        except NotAdmitted:
            rng = rng or Random(os.urandom(8))
            pause = wait * (0.5 + rng.random())
            if loop.time() + pause >= deadline:
                raise
            await asyncio.sleep(pause)
            wait = min(2 * wait, 0.5)


async def _connect_once(
    address: Address,
    key: bytes,
    name: str,
    *,
    role: str,
    ssl_context: ssl.SSLContext | None,
    limits: Limits,
) -> Channel:
    host, port = address
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
        )
    except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError) as exc:
        if ssl_context is None:
            raise
        # Closed inside the TLS handshake without an alert: dropped early.
        raise NotAdmitted("the node closed the connection in the TLS handshake") from exc
    try:
        session = await _handshake(
            reader, writer, key, name, role=role, limit=limits.handshake_timeout, initiator=True
        )
    except BaseException:
        writer.close()
        raise
    return Channel(reader, writer, session, limits)


#: How a connection ends when the other side closes it mid-handshake.
_CLOSED = (PeerClosed, asyncio.IncompleteReadError, ConnectionResetError)
#: What a responder sends instead of its proof when the initiator's does not
#: verify, so that a wrong key is told apart from a connection dropped early.
KEY_REFUSED = b"crdtkit-key-refused-v1"


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    key: bytes,
    name: str,
    *,
    role: str,
    limit: float,
    initiator: bool,
    on_hello: Callable[[], object] | None = None,
) -> Session:
    shake = Handshake(key, name, role, os.urandom(32), initiator=initiator)

    async def frame() -> bytes:
        return await read_frame(reader, 4096, limit, limit)

    if initiator:
        _write_frame(writer, shake.hello())
        try:
            hello = await frame()
            _write_frame(writer, shake.receive_hello(hello))
            proof = await frame()
        except _CLOSED as exc:
            raise NotAdmitted("the node closed the connection in the handshake "
                              "(too busy, or stopping)") from exc
        if proof == KEY_REFUSED:
            raise KeyRefused("the node refused our proof: it holds another cluster key")
        session = shake.receive_proof(proof)
    else:
        proof = shake.receive_hello(await frame())
        if on_hello is not None:
            on_hello()
        _write_frame(writer, shake.hello())
        try:
            session = shake.receive_proof(await frame())  # theirs first: they dialled
        except AuthError:
            _write_frame(writer, KEY_REFUSED)
            with contextlib.suppress(OSError):
                await writer.drain()
            raise
        _write_frame(writer, proof)
    await writer.drain()
    return session
