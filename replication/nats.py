"""The NATS transport: nodes on many hosts, through a NATS server or cluster.

:class:`NatsEndpoint` is a :class:`~replication.transport.Transport` over
NATS (client ``nats-py``, asyncio; server ``nats-server``), driven like any
other by :class:`~replication.runtime.NodeRuntime`. For users who already
run NATS, or need its clustering, routing and auth across hosts and sites;
the TCP runtime (``replication.tcp``) stays the zero-dependency default.

Subjects: every node receives on its own subject under the cluster's prefix,
``crdtkit.<cluster>.node.<node id>`` (:meth:`NatsEndpoint.subject`; a node id
character outside ``A-Z a-z 0-9 _ -`` is written ``~`` and two hex digits per
UTF-8 byte, so any id makes one subject token). Sends are fire-and-forget
publishes (core NATS, at most once): the replicator already tolerates loss,
duplication and reordering.

Authentication: there is no connection between two nodes to run a handshake
on, so every frame travels in an :class:`~replication.envelope.Envelope`: a
MAC with the cluster key over sender, receiver, the sender's boot nonce and a
sequence number, and a sliding replay window per ``(sender, boot)``. A frame
that is over the size limit, malformed, forged, addressed to another node,
naming this node as its sender, or replayed is refused and counted in
:attr:`NatsEndpoint.stats` by that reason, never raised; so is a frame the
node refuses (``on_frame`` raising ``PeerMisbehaved``: ``refused``). A
sender's restart (a new boot) is accepted. NATS's own TLS, user/password,
token, NKey and credentials options pass through ``options`` to
``nats.connect``.

Size: a frame must fit the server's ``max_payload`` (from its INFO, 1 MiB by
default) with its envelope: :attr:`NatsEndpoint.max_frame` says how large a
frame may be (give it to ``Replicator(max_frame=...)``, less the snapshot
layer's header if one is used). A larger frame is dropped and counted at
``send``; an arriving frame over the limit is refused before anything in it
is read.

Cost: a frame costs one HMAC-SHA256 to seal or open (about 1 ms per MiB) and
one publish; memory is bounded by the outbox (``queue`` frames), the inbox
(``queue`` frames, when ``receive`` is used) and the envelope's windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from replication.envelope import MAX_OVERHEAD, Envelope, EnvelopeRefused
from replication.transport import FrameHandler, PeerMisbehaved

__all__ = ["DEFAULT_MAX_PAYLOAD", "NatsEndpoint", "NatsStats", "subject"]

log = logging.getLogger("crdtkit.nats")

#: nats-server's default ``max_payload``: what is assumed before the INFO says.
DEFAULT_MAX_PAYLOAD = 1 << 20
_PREFIX = "crdtkit"
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _token(node_id: str) -> str:
    if type(node_id) is not str or not node_id:
        raise ValueError(f"a node id is a non-empty str, not {node_id!r}")
    if _TOKEN.fullmatch(node_id):
        return node_id
    return "".join(
        c if c in _PLAIN else "".join(f"~{b:02x}" for b in c.encode("utf-8")) for c in node_id
    )


def subject(cluster: str, kind: str, node_id: str) -> str:
    """The subject on which node ``node_id`` of ``cluster`` takes messages of
    ``kind`` (``node`` for frames between nodes; other kinds are the
    application's, e.g. client requests). ``cluster`` and ``kind`` must be
    plain tokens (``A-Z a-z 0-9 _ -``); the node id is escaped.

    >>> subject("prod", "node", "n1")
    'crdtkit.prod.node.n1'
    >>> subject("prod", "node", "10.0.0.7:7000")
    'crdtkit.prod.node.10~2e0~2e0~2e7~3a7000'
    >>> subject("prod.eu", "node", "n1")
    Traceback (most recent call last):
    ...
    ValueError: a cluster name is a plain token (A-Z a-z 0-9 _ -), not 'prod.eu'

    Cost: O(len(node_id)).
    """
    if type(cluster) is not str or not _TOKEN.fullmatch(cluster):
        raise ValueError(f"a cluster name is a plain token (A-Z a-z 0-9 _ -), not {cluster!r}")
    if type(kind) is not str or not _TOKEN.fullmatch(kind):
        raise ValueError(f"a subject kind is a plain token (A-Z a-z 0-9 _ -), not {kind!r}")
    return f"{_PREFIX}.{cluster}.{kind}.{_token(node_id)}"


@dataclass(slots=True)
class NatsStats:
    """What an endpoint saw: frames sent and taken in, and every frame
    dropped or refused, by reason.

    >>> NatsStats(forged=1, replayed=2).refusals
    3
    """

    sent: int = 0
    received: int = 0  # delivered to the node
    bytes_sent: int = 0  # envelopes, as published
    bytes_received: int = 0  # envelopes, as they arrived (refused ones too)
    dropped: int = 0  # frames not sent or not kept: closed, a full queue, a bad name, NATS error
    oversize_sent: int = 0  # frames over max_frame, dropped at send
    oversize: int = 0  # arrived over the limit: refused before anything was read
    malformed: int = 0
    forged: int = 0
    misaddressed: int = 0
    impersonating: int = 0
    replayed: int = 0
    refused: int = 0  # by the node (on_frame raised PeerMisbehaved)
    errors: int = 0  # reported by the NATS client (disconnections, slow consumer, ...)

    @property
    def refusals(self) -> int:
        """Arrived frames refused for any reason.

        >>> NatsStats(oversize=1, refused=1).refusals
        2

        Cost: O(1).
        """
        return (
            self.oversize + self.malformed + self.forged + self.misaddressed
            + self.impersonating + self.replayed + self.refused
        )


class NatsEndpoint:
    """One node's endpoint on NATS: a :class:`~replication.transport.Transport`.

    ``servers`` are NATS URLs (tried in an order ``rng`` shuffles); ``key``
    is the cluster key (``replication.auth``), ``cluster`` the cluster's name
    (a plain token: it makes the subject prefix and separates the MACs of
    clusters sharing a key). ``options`` pass through to ``nats.connect``
    (``tls``, ``user``/``password``, ``token``, ``user_credentials``,
    ``nkeys_seed``, ``name``, reconnect settings...; they override this
    endpoint's defaults). ``max_payload`` lowers the server's limit on an
    envelope. Frames that arrive go to ``on_frame(sender, frame)`` if set,
    else wait for :meth:`receive` (at most ``queue`` of them; as many wait
    to be published). :meth:`start` gives up after ``start_timeout``
    seconds; once connected, the client reconnects for ever.

    >>> async def demo(url):
    ...     key = bytes(32)
    ...     a = NatsEndpoint("a", key, servers=[url], cluster="demo", rng=Random(1))
    ...     b = NatsEndpoint("b", key, servers=[url], cluster="demo", rng=Random(2))
    ...     await a.start(); await b.start()
    ...     a.send("b", b"hello")
    ...     for _ in range(200):  # bounded: at most 2 s
    ...         got = b.receive()
    ...         if got:
    ...             break
    ...         await asyncio.sleep(0.01)
    ...     await a.close(); await b.close()
    ...     return got
    >>> asyncio.run(demo(nats_url))  # doctest: +SKIP
    [('a', b'hello')]

    Cost: see the module docstring.
    """

    def __init__(
        self,
        node_id: str,
        key: bytes,
        *,
        servers: Sequence[str],
        cluster: str,
        rng: Random,
        options: Mapping[str, Any] | None = None,
        max_payload: int | None = None,
        queue: int = 4096,
        max_senders: int = 1024,
        start_timeout: float = 10.0,
        on_frame: FrameHandler | None = None,
    ) -> None:
        if isinstance(servers, str) or not servers:
            raise ValueError(f"servers is a non-empty list of NATS URLs, not {servers!r}")
        if max_payload is not None and max_payload <= MAX_OVERHEAD:
            raise ValueError(f"max_payload must exceed {MAX_OVERHEAD} bytes, got {max_payload}")
        if queue < 1:
            raise ValueError(f"queue is at least 1, got {queue}")
        if not start_timeout > 0:
            raise ValueError(f"start_timeout is positive, got {start_timeout!r}")
        self._start_timeout = start_timeout
        self._node = node_id
        self._cluster = cluster
        self._subject = subject(cluster, "node", node_id)  # checks both names
        self._envelope = Envelope(node_id, key, cluster=cluster, max_senders=max_senders)
        self._servers = list(servers)
        rng.shuffle(self._servers)
        self._options = dict(options or {})
        self._max_payload_asked = max_payload
        self._max_payload = min(max_payload or DEFAULT_MAX_PAYLOAD, DEFAULT_MAX_PAYLOAD)
        self._queue = queue
        self.on_frame: FrameHandler | None = on_frame
        self._inbox: list[tuple[str, bytes]] = []
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._nc: Client | None = None
        self._closed = False
        self.stats = NatsStats()

    # -- names and limits --------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """This endpoint's node id.

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> endpoint.node_id
        'a'

        Cost: O(1).
        """
        return self._node

    @property
    def cluster(self) -> str:
        """The cluster's name.

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> endpoint.cluster
        'demo'

        Cost: O(1).
        """
        return self._cluster

    def subject(self, kind: str, node_id: str) -> str:
        """:func:`subject` in this endpoint's cluster: ``subject("node", id)``
        is where node ``id`` takes frames.

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> endpoint.subject("node", "b"), endpoint.subject("client", "a")
        ('crdtkit.demo.node.b', 'crdtkit.demo.client.a')

        Cost: O(len(node_id)).
        """
        return subject(self._cluster, kind, node_id)

    @property
    def max_payload(self) -> int:
        """The largest envelope sent or taken in: the server's ``max_payload``
        once connected (1 MiB before), lowered by the ``max_payload`` asked
        for.

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> endpoint.max_payload                    # before start: the default
        1048576

        Cost: O(1).
        """
        return self._max_payload

    @property
    def max_frame(self) -> int:
        """The largest frame :meth:`send` carries, whatever the node ids:
:attr:`max_payload` less the largest envelope overhead.

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> endpoint.max_frame
        1048007

        Cost: O(1).
        """
        return self._max_payload - MAX_OVERHEAD

    @property
    def connection(self) -> Client:
        """The connected NATS client, for the application's own subjects
        (request/reply). RuntimeError before :meth:`start`.

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> endpoint.connection
        Traceback (most recent call last):
        ...
        RuntimeError: the endpoint is not started

        Cost: O(1).
        """
        if self._nc is None:
            raise RuntimeError("the endpoint is not started")
        return self._nc

    @property
    def boot(self) -> bytes:
        """This start's boot nonce (it changes with every new endpoint).

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> len(endpoint.boot)
        16

        Cost: O(1).
        """
        return self._envelope.boot

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, read the server's ``max_payload`` and subscribe to this
        node's subject. Raises TimeoutError when no server answers within
        ``start_timeout`` (the client retries until then), or what
        ``nats.connect`` raises (an authorization error, say).

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> asyncio.run(endpoint.start())   # doctest: +SKIP

        Cost: a connection handshake and a flush.
        """
        if self._nc is not None or self._closed:
            raise RuntimeError("an endpoint starts once")
        options: dict[str, Any] = {
            "servers": self._servers,
            "name": f"crdtkit {self._cluster} {self._node}",
            "dont_randomize": True,  # shuffled by our rng instead
            "max_reconnect_attempts": -1,  # a replica keeps trying
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            "error_cb": self._error,
        }
        options.update(self._options)
        try:
            # With reconnects unbounded, nats.connect retries a first connection
            # for ever too: the bound is ours.
            nc = await asyncio.wait_for(nats.connect(**options), self._start_timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no NATS server of {self._servers} answered within {self._start_timeout} s"
            ) from None
        self._nc = nc
        self._max_payload = min(nc.max_payload, self._max_payload_asked or nc.max_payload)
        await nc.subscribe(self._subject, cb=self._on_msg)
        await nc.flush()
        self._wakeup = asyncio.Event()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_outbox())

    async def close(self) -> None:
        """Send what is queued (for at most a second), unsubscribe and
        disconnect. Idempotent.

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> asyncio.run(endpoint.close()); endpoint.send("b", b"x"); endpoint.stats.dropped
        1

        Cost: O(queued frames).
        """
        if self._closed:
            return
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flusher, 1.0)
        nc = self._nc
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.flush(), 1.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)
        self._inbox = []

    async def _error(self, exc: Exception) -> None:
        self.stats.errors += 1
        log.debug("%s: NATS: %r", self._node, exc)

    # -- the Transport surface ---------------------------------------------------------

    def send(self, destination: str, frame: bytes) -> None:
        """Seal ``frame`` for ``destination`` and queue it for publishing;
        never blocks or raises (a closed endpoint, a frame over
        :attr:`max_frame`, a name that cannot be an id or a full outbox drop
        it, counted).

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> endpoint.send("b", b"x")   # not started: dropped, counted
        >>> endpoint.stats.dropped
        1

        Cost: one HMAC over the frame.
        """
        if self._closed or self._wakeup is None:
            self.stats.dropped += 1
            return
        if len(frame) > self.max_frame:
            self.stats.oversize_sent += 1
            return
        if len(self._outbox) >= self._queue:
            self.stats.dropped += 1
            return
        try:
            target = self.subject("node", destination)
            sealed = self._envelope.seal(destination, frame)
        except (ValueError, TypeError):
            self.stats.dropped += 1
            return
        self._outbox.append((target, sealed))
        self._wakeup.set()

    def receive(self) -> list[tuple[str, bytes]]:
        """The frames that arrived since the last call (when there is no
        ``on_frame``).

        >>> endpoint = NatsEndpoint("a", bytes(16), servers=["nats://127.0.0.1:4222"],
        ...                         cluster="demo", rng=Random(1))
        >>> endpoint.receive()
        []

        Cost: O(frames).
        """
        out, self._inbox = self._inbox, []
        return out

    # -- publishing --------------------------------------------------------------------

    async def _flush_outbox(self) -> None:
        assert self._nc is not None and self._wakeup is not None
        nc, wakeup, outbox, stats = self._nc, self._wakeup, self._outbox, self.stats
        while True:
            while outbox:
                target, sealed = outbox.popleft()
                try:
                    await nc.publish(target, sealed)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # disconnected with a full buffer, closed...
                    stats.dropped += 1
                    log.debug("%s: publish to %s: %r", self._node, target, exc)
                    continue
                stats.sent += 1
                stats.bytes_sent += len(sealed)
            if self._closed:
                return
            wakeup.clear()
            await wakeup.wait()

    # -- taking in ---------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        self._take(msg.data)

    def _take(self, data: bytes) -> None:
        stats = self.stats
        stats.bytes_received += len(data)
        if self._closed:
            return
        try:
            sender, body = self._envelope.open(data, self._max_payload)
        except EnvelopeRefused as refused:
            # reason is one of envelope.REASONS, each a counter here
            setattr(stats, refused.reason, getattr(stats, refused.reason) + 1)
            log.debug("%s: refused a frame: %s", self._node, refused)
            return
        stats.received += 1
        if self.on_frame is None:
            if len(self._inbox) >= self._queue:
                stats.dropped += 1
                return
            self._inbox.append((sender, body))
            return
        try:
            self.on_frame(sender, body)
        except PeerMisbehaved as exc:
            stats.refused += 1
            log.debug("%s: %s", self._node, exc)
