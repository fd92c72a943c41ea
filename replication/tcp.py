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
After it, every frame is sealed with a per-connection key and a sequence
number, so a forged, replayed, reordered or reflected frame is refused. A
connection that breaks any rule (a length over the cap, a zero-length or
truncated frame, a bad MAC, a replay, a header and then silence, a peer that
names itself differently than the node we dialled) is closed and counted, and
nothing of it reaches the node; the endpoint keeps serving the others. Limits
on connections in total and per address are checked as they are accepted.

Data flows one way per connection: a node sends to a peer over the connection
it opened to that peer (opened on the first send, reopened after a failure
with jittered exponential backoff) and receives over the connections its peers
opened to it. Frames wait in a bounded queue per peer; when it is full the
newest is dropped and counted, as gossip tolerates loss. With ``ssl`` contexts
the connections run over TLS (mutual, when the server context requires
client certificates); the handshake still runs inside it.

Cost: a frame costs O(size) to seal or open (HMAC-SHA256 at C speed) plus a
socket write or read; memory is bounded by the queues and ``max_frame``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from random import Random

from replication.auth import AuthError, Handshake, Hello, Session
from replication.messages import DEFAULT_FRAME, MAX_FRAME
from replication.runtime import NodeRuntime  # re-exported: it lived here
from replication.transport import FrameHandler, PeerMisbehaved

__all__ = [
    "OVERHEAD",
    "Channel",
    "FrameReader",
    "FrameTooLarge",
    "Limits",
    "NodeRuntime",
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


class FrameTooLarge(Exception):
    """A length prefix over the cap: refused before the body was read."""


class PeerClosed(Exception):
    """The stream ended cleanly, between frames."""


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds an endpoint enforces on its peers.

    >>> Limits().max_connections, Limits(read_timeout=0.5).read_timeout
    (64, 0.5)
    """

    #: Between peers: a replicator's frame (``Replicator(max_frame=...)``,
    #: the same on every node) plus overhead. A node whose replicator sends
    #: larger frames needs ``Limits(max_frame=its max_frame + OVERHEAD)``.
    max_frame: int = DEFAULT_FRAME + _OVERHEAD
    #: Client requests and answers (a keyspace, a recording): larger.
    max_client_frame: int = MAX_FRAME + _OVERHEAD
    max_connections: int = 64  # accepted connections open at once
    max_per_address: int = 8  # of those, from one IP address
    handshake_timeout: float = 5.0
    read_timeout: float = 5.0  # for a frame's body once its length arrived
    idle_timeout: float = 300.0  # for the next frame's length
    queue: int = 4096  # frames waiting per peer
    backoff: tuple[float, float] = (0.05, 5.0)  # first and longest reconnect wait


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

    __slots__ = ("_buffer", "_reader")

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._buffer = bytearray()  # read, not yet taken as frames

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
            async with asyncio.timeout(body_timeout if buffer else header_timeout):
                data = await self._reader.read(max(want, _CHUNK))
            if not data:
                if buffer:
                    raise asyncio.IncompleteReadError(bytes(buffer), None)
                raise PeerClosed("the peer closed the connection between frames")
            buffer += data


def _write_frame(writer: asyncio.StreamWriter, body: bytes) -> None:
    writer.write(len(body).to_bytes(_LENGTH, "big") + body)


class TcpEndpoint:
    """One node's TCP endpoint: a :class:`~replication.transport.Transport`.

    ``peers`` maps node ids to the addresses to dial; ``key`` is the cluster
    key (see ``replication.auth``). ``rng`` jitters the reconnect backoff;
    the handshake's nonces come from ``os.urandom``, as they must be
    unpredictable. Frames that arrive go to ``on_frame(sender, frame)`` if
    given, else wait for :meth:`receive`. A connection that authenticates
    in the ``client`` role is handed to ``await on_client(channel)`` (a
    :class:`Channel`, closed when it returns), or refused without one.

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
    ) -> None:
        self._node = node_id
        self._key = key
        self._rng = rng
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
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: Counter[str] = Counter()  # accepted connections by address
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False
        self.stats = TcpStats()

    @property
    def node_id(self) -> str:
        """This endpoint's node id. Cost: O(1)."""
        return self._node

    @property
    def address(self) -> Address:
        """The address it listens on (the real port when asked for port 0).
        Cost: O(1)."""
        if self._server is None or not self._server.sockets:
            return self._listen
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

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
        # A failed TLS handshake is closed by the TLS layer before _accept
        # sees the connection, so it is not counted in stats. (Starting TLS
        # inside _accept would count it, but StreamWriter.start_tls on the
        # server side runs the connection callback twice on Python 3.11.)
        self._server = await asyncio.start_server(
            self._accept,
            self._listen[0],
            self._listen[1],
            ssl=self._server_ssl,
            ssl_handshake_timeout=self.limits.handshake_timeout if self._server_ssl else None,
        )

    async def close(self) -> None:
        """Stop listening and close every connection. Cost: O(connections)."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

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

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        # The endpoint's own loop, not the running one: ``send`` may be called
        # from synchronous code between runs of the loop (as a Transport).
        assert self._loop is not None  # send() checks it
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dial(self, peer: str) -> None:
        failures = 0
        while not self._closed:
            writer: asyncio.StreamWriter | None = None
            try:
                host, port = self._peers[peer]
                reader, connected = await asyncio.wait_for(
                    asyncio.open_connection(
                        host,
                        port,
                        ssl=self._client_ssl,
                        server_hostname=host if self._client_ssl else None,
                    ),
                    self.limits.handshake_timeout,
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
                log.warning("%s: dialling %s: %s", self._node, peer, exc)
            except (OSError, PeerClosed, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
                pass  # the peer is down or went away: try again later
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

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        host = str(peername[0]) if peername else "?"
        if (
            sum(self._open.values()) >= self.limits.max_connections
            or self._open[host] >= self.limits.max_per_address
        ):
            self.stats.refused["too many connections"] += 1
            log.warning("%s: refused a connection from %s: too many", self._node, host)
            writer.close()
            return
        self._open[host] += 1
        self._writers.add(writer)
        self.stats.accepted += 1
        try:
            session = await self._handshake(reader, writer, initiator=False)
            peer = session.peer.node
            if session.peer.role == "client" and self.on_client is not None:
                await self.on_client(Channel(reader, writer, session, self.limits))
                return
            if peer == self._node or session.peer.role != "peer":
                raise AuthError(f"a peer may not call itself {peer!r} ({session.peer.role})")
            limits = self.limits
            frames = FrameReader(reader)
            while not self._closed:
                sealed = await frames.next(
                    limits.max_frame, limits.idle_timeout, limits.read_timeout
                )
                body = session.open(sealed)
                self.stats.received += 1
                self.stats.bytes_received += _LENGTH + len(sealed)
                if self.on_frame is None:
                    self._inbox.append((peer, body))
                else:
                    self.on_frame(peer, body)
        except asyncio.CancelledError:
            raise
        except PeerClosed:
            pass  # closed cleanly between frames
        except (
            AuthError,
            FrameTooLarge,
            PeerMisbehaved,
            TimeoutError,
            asyncio.IncompleteReadError,
            OSError,
        ) as exc:
            self.stats.refused[_reason(exc)] += 1
            log.warning("%s: closed a connection from %s: %s", self._node, host,
                        f"{_reason(exc)} ({exc})" if str(exc) else _reason(exc))
        finally:
            self._open[host] -= 1
            self._writers.discard(writer)
            writer.close()


_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    (FrameTooLarge, "frame over the limit"),
    (TimeoutError, "timed out"),
    (asyncio.IncompleteReadError, "truncated frame"),
    (AuthError, "failed authentication"),
    (PeerMisbehaved, "refused by the node"),
    (ssl.SSLError, "TLS"),
)


def _reason(exc: BaseException) -> str:
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
        self._out: list[bytes] = []  # sealed frames for the next write
        self._frames = FrameReader(reader)

    @property
    def peer(self) -> Hello:
        """Who is at the other end (authenticated). Cost: O(1)."""
        return self._session.peer

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next frame's body; PeerClosed at a clean end, AuthError,
        FrameTooLarge, TimeoutError or IncompleteReadError otherwise.
        Cost: O(frame size)."""
        limits = self._limits
        idle = limits.idle_timeout if timeout is None else timeout
        sealed = await self._frames.next(limits.max_client_frame, idle, limits.read_timeout)
        return self._session.open(sealed)

    async def send(self, body: bytes) -> None:
        """Seal and send ``body``, waiting while the connection's buffer is
        full. Cost: O(len(body))."""
        self.send_nowait(body)
        await self._writer.drain()

    def send_nowait(self, body: bytes) -> None:
        """Seal ``body`` and send it with every other frame sealed in this
        turn of the event loop: one write for all of them (a pipelining
        peer's answers would cost a system call each). Frames go out in the
        order sealed; on a closed connection they are dropped.
        Cost: O(len(body))."""
        sealed = self._session.seal(body)
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out += (len(sealed).to_bytes(_LENGTH, "big"), sealed)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self._writer.is_closing():
            self._writer.write(b"".join(out))

    def close(self) -> None:
        """Send what is sealed, then close the connection. Cost: O(1)."""
        self._flush()
        self._writer.close()


async def connect(
    address: Address,
    key: bytes,
    name: str,
    *,
    role: str = "client",
    ssl_context: ssl.SSLContext | None = None,
    limits: Limits | None = None,
) -> Channel:
    """Dial a node at ``address`` and authenticate as ``name`` in ``role``;
    raises OSError, TimeoutError or AuthError if that fails.

    Cost: one round trip of the handshake.
    """
    limits = limits or Limits()
    host, port = address
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
        ),
        limits.handshake_timeout,
    )
    try:
        session = await _handshake(
            reader, writer, key, name, role=role, limit=limits.handshake_timeout, initiator=True
        )
    except BaseException:
        writer.close()
        raise
    return Channel(reader, writer, session, limits)


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    key: bytes,
    name: str,
    *,
    role: str,
    limit: float,
    initiator: bool,
) -> Session:
    shake = Handshake(key, name, role, os.urandom(32), initiator=initiator)

    async def frame() -> bytes:
        return await read_frame(reader, 4096, limit, limit)

    if initiator:
        _write_frame(writer, shake.hello())
        _write_frame(writer, shake.receive_hello(await frame()))
        session = shake.receive_proof(await frame())
    else:
        proof = shake.receive_hello(await frame())
        _write_frame(writer, shake.hello())
        session = shake.receive_proof(await frame())  # theirs first: they dialled
        _write_frame(writer, proof)
    await writer.drain()
    return session
