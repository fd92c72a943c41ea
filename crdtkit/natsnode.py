"""A node on NATS: frames through ``replication.nats.NatsEndpoint``, client
requests as NATS request/reply, sealed with the cluster key.

Subjects (``P`` is the endpoint's cluster prefix): a node receives frames on
its own subject (the endpoint's), and client requests on
``P.requests.<node id>`` (:func:`requests_subject`). There are no addresses:
seeds and static peers are node ids, and a member record's address is the
node's request subject, for people to read.

A broker has no per-connection session, so every request proves on its own
that its sender holds the cluster key (:func:`seal_request`):

- a request is ``payload + MAC``, ``payload`` the canonical CBOR array
  ``["rq", 1, client, nonce, sent_ms, body]`` and the MAC
  ``HMAC-SHA256(k, "rq" + subject + 0 + reply + 0 + payload)`` with ``k``
  derived from the cluster key for client requests only. It covers the
  subject it was sent to and the reply subject, so it cannot be turned
  against another node or made to answer to another subject;
- the node takes a request only within ``window`` seconds of ``sent_ms`` by
  its own clock, and only once (it keeps the nonces it took within the
  window, at most ``MAX_NONCES``; past that it takes only requests newer
  than the oldest it remembers), so a recorded request cannot be replayed;
- a request larger than the server's ``max_payload`` travels in parts,
  each ``["rp", 1, client, nonce, sent_ms, index, count, chunk]`` sealed as
  a request is (with its own tag, ``"rp"``), so the node checks each part's
  MAC before it keeps any of it; the node puts a request's parts together
  (at most ``MAX_ASSEMBLIES`` requests and ``MAX_ASSEMBLY_BYTES`` at once,
  the oldest dropped for room, none kept beyond the window) and takes the
  nonce once the request is whole;
- an answer is ``["ra", 1, nonce, index, count, chunk]`` plus its MAC
  (over the node id too), cut in chunks that fit the server's
  ``max_payload``; the client takes only answers to nonces it sent, with a
  good MAC, so no one without the key can answer in a node's name.

A request that fails (not a request, a bad MAC, stale, replayed) is dropped
and counted by reason in :meth:`NatsNodeTransport.refused`; one with a reply
subject is answered ``["rf", 1, nonce, reason]`` (unsealed: the requester
may not hold the key) at most ``REFUSALS_PER_SECOND`` times a second, so a
client with the wrong key learns why instead of waiting. A request that
passes is served as over TCP (``crdtkit.protocol``); one that does not parse
is answered with an error. At most ``MAX_REQUESTS`` requests are in flight
at a node; past that a request is answered "busy".

Cost: two HMAC-SHA256 per request and answer (about 1 ms per MiB), and a
NATS message each way (more for a request or an answer over
``max_payload``).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from random import Random
from typing import Any

from crdtkit import protocol
from crdtkit.transports import Requests
from crdts import codec
from crdts.base import expect_list, expect_uint
from crdts.errors import DecodeError, PeerError
from replication.messages import DEFAULT_FRAME
from replication.nats import NatsEndpoint, subject

__all__ = [
    "CONNECT_TIMEOUT",
    "MAX_ASSEMBLIES",
    "MAX_ASSEMBLY_BYTES",
    "MAX_NONCES",
    "MAX_REQUESTS",
    "NATS_FRAME",
    "REFUSALS_PER_SECOND",
    "NatsChannel",
    "NatsNodeTransport",
    "NatsUnavailable",
    "NodeUnreachable",
    "RequestRefused",
    "open_part",
    "open_request",
    "redact",
    "requests_subject",
    "seal_parts",
    "seal_request",
]

log = logging.getLogger("crdtkit.node")

#: Nonces a node remembers (requests taken within the window).
MAX_NONCES = 100_000
#: Requests a node serves at once over NATS.
MAX_REQUESTS = 4096
#: Requests in parts a node puts together at once, and their bytes in all:
#: past either, the oldest is dropped (its client sends it again).
MAX_ASSEMBLIES = 64
MAX_ASSEMBLY_BYTES = 2 * protocol.MAX_MESSAGE
#: Seconds a client waits for a NATS server to take its connection.
CONNECT_TIMEOUT = 10.0
#: Refusals answered per second (the rest are only counted).
REFUSALS_PER_SECOND = 20
#: Core NATS delivers at most once (a message can be lost, nats-server#5677
#: among the ways): a request not answered within these seconds is sent again
#: under a new nonce, the waits doubling up to the last. Safe, because an
#: update carries its request id and the node applies an id at most once;
#: other requests only read.
RETRY_AFTER = (1.0, 2.0, 4.0, 8.0)
#: How many times one request is sent again before the channel stops trying
#: (about two minutes); the caller's own deadline still applies.
MAX_RETRIES = 16
_MAC = 32
_NONCE = 16
_VERSION = 1
#: The replicator's frame size over NATS: 1 MiB (nats-server's default
#: ``max_payload``) less 64 KiB for the envelope and the snapshot header.
NATS_FRAME = DEFAULT_FRAME - 64 * 1024
#: Room in a NATS message for the answer's envelope and MAC.
_ENVELOPE = 256


class RequestRefused(PeerError):
    """A node refused a request before serving it (most often: the client's
    cluster key is not the node's), and said why."""


class NatsUnavailable(PeerError, ConnectionError):
    """A client could not connect to any of the NATS servers it was given
    (down, or refusing its user, credentials or TLS)."""


class NodeUnreachable(PeerError):
    """No node listens on the subject asked (NATS's "no responders"): the
    node is not running (yet), or runs under another cluster name. Unlike a
    TCP client's ``NodeUnavailable`` the client stays usable: a later call
    reaches the node once it listens."""


def redact(text: str) -> str:
    """``text`` with the user and password or token of every URL in it hidden.

    >>> redact("tls://crdt:secret@nats1:4222, nats://tok@nats2:4222, nats://nats3:4222")
    'tls://***@nats1:4222, nats://***@nats2:4222, nats://nats3:4222'

    Cost: O(len(text)).
    """
    return re.sub(r"(://)[^/@\s,]+@", r"\1***@", text)


def requests_subject(cluster: str, node: str) -> str:
    """The subject ``node`` of ``cluster`` takes client requests on.

    >>> requests_subject("demo", "n1")
    'crdtkit.demo.requests.n1'

    Cost: O(len(node)).
    """
    return subject(cluster, "requests", node)


def _client_key(key: bytes) -> bytes:
    # Client requests get a key of their own, so no frame between nodes
    # (the endpoint's MACs) can ever pass as a request, or the other way.
    return hmac.new(key, b"crdtkit-nats-client-v1", sha256).digest()


def _mac(key: bytes, tag: bytes, *parts: str, payload: bytes) -> bytes:
    mac = hmac.new(key, tag, sha256)
    for part in parts:
        mac.update(part.encode())
        mac.update(b"\0")
    mac.update(payload)
    return mac.digest()


def seal_request(
    key: bytes, *, to: str, reply: str, client: str, nonce: bytes, sent_ms: int, body: bytes
) -> bytes:
    """A request for the node at ``subject``, answered to ``reply``.

    >>> key = bytes(32)
    >>> sealed = seal_request(key, to="s", reply="r", client="c", nonce=bytes(16),
    ...                       sent_ms=1000, body=b"hi")
    >>> client, nonce, sent_ms, body = open_request(key, "s", "r", sealed)
    >>> client, nonce == bytes(16), sent_ms, body
    ('c', True, 1000, b'hi')

    Cost: O(len(body)).
    """
    payload = codec.encode_plain(["rq", _VERSION, client, nonce, sent_ms, body])
    return payload + _mac(_client_key(key), b"rq", to, reply, payload=payload)


def open_request(
    key: bytes, to: str, reply: str, sealed: bytes
) -> tuple[str, bytes, int, bytes]:
    """``(client, nonce, sent_ms, body)`` of a sealed request; DecodeError
    if it is not one or its MAC is wrong (freshness is the caller's).

    >>> sealed = seal_request(bytes(32), to="s", reply="other", client="c", nonce=bytes(16),
    ...                       sent_ms=1, body=b"")
    >>> open_request(bytes(32), "s", "r", sealed)
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: bad MAC

    Cost: O(len(sealed)).
    """
    _, _, client, nonce, sent_ms, body = _opened(key, "rq", to, reply, sealed, arity=6)
    return client, nonce, sent_ms, body


def seal_parts(
    key: bytes, *, to: str, reply: str, client: str, nonce: bytes, sent_ms: int, body: bytes,
    room: int,
) -> list[bytes]:
    """A request too large for one NATS message, in sealed parts of at most
    ``room`` bytes of ``body`` each (at least two).

    >>> parts = seal_parts(bytes(32), to="s", reply="r", client="c", nonce=bytes(16),
    ...                    sent_ms=1, body=b"hello", room=2)
    >>> [open_part(bytes(32), "s", "r", p)[3:] for p in parts]
    [(0, 3, b'he'), (1, 3, b'll'), (2, 3, b'o')]

    Cost: O(len(body)).
    """
    count = max(2, -(-len(body) // room))
    client_key = _client_key(key)
    sealed = []
    for index in range(count):
        payload = codec.encode_plain(["rp", _VERSION, client, nonce, sent_ms, index, count,
                                      body[index * room:(index + 1) * room]])
        sealed.append(payload + _mac(client_key, b"rp", to, reply, payload=payload))
    return sealed


def open_part(
    key: bytes, to: str, reply: str, sealed: bytes
) -> tuple[str, bytes, int, int, int, bytes]:
    """``(client, nonce, sent_ms, index, count, chunk)`` of a sealed part
    (:func:`seal_parts`); DecodeError if it is not one or its MAC is wrong.
    Cost: O(len(sealed))."""
    fields = _opened(key, "rp", to, reply, sealed, arity=8)
    _, _, client, nonce, sent_ms, index, count, chunk = fields
    count = expect_uint(count, "count", 2)
    index = expect_uint(index, "index")
    if index >= count:
        raise DecodeError("a part's index is below its count")
    return client, nonce, sent_ms, index, count, chunk


def _opened(key: bytes, kind: str, to: str, reply: str, sealed: bytes, *, arity: int) -> Any:
    """The fields of a sealed request or part (``kind`` ``"rq"`` or
    ``"rp"``, its tag in the MAC too): ``[kind, 1, client, nonce, sent_ms,
    ..., body]``, the client, nonce, time and body checked; DecodeError if
    its MAC is wrong or it is not one."""
    if len(sealed) <= _MAC:
        raise DecodeError(f"not a sealed {kind}")
    payload, mac = sealed[:-_MAC], sealed[-_MAC:]
    if not hmac.compare_digest(mac, _mac(_client_key(key), kind.encode(), to, reply,
                                         payload=payload)):
        raise DecodeError("bad MAC")
    raw = expect_list(codec.decode_plain(payload, max_size=protocol.MAX_MESSAGE), kind)
    if len(raw) != arity or raw[:2] != [kind, _VERSION]:
        raise DecodeError(f"not a version 1 {kind}")
    client, nonce, sent_ms, body = raw[2], raw[3], raw[4], raw[-1]
    if type(client) is not str or type(nonce) is not bytes or len(nonce) != _NONCE \
            or type(body) is not bytes:
        raise DecodeError(f"a {kind} is [{kind}, 1, client, nonce, sent_ms, ..., bytes]")
    expect_uint(sent_ms, "sent_ms")
    return raw


def _seal_answer(key: bytes, node: str, nonce: bytes, part: tuple[int, int, bytes]) -> bytes:
    index, count, chunk = part
    payload = codec.encode_plain(["ra", _VERSION, nonce, index, count, chunk])
    return payload + _mac(key, b"ra", node, payload=payload)


def _answers(key: bytes, node: str, nonce: bytes, body: bytes, room: int) -> list[bytes]:
    """``body`` sealed in chunks of at most ``room`` bytes."""
    count = max(1, -(-len(body) // room))
    return [_seal_answer(key, node, nonce, (i, count, body[i * room:(i + 1) * room]))
            for i in range(count)]


def _refusal(nonce: bytes | None, reason: str) -> bytes:
    return codec.encode_plain(["rf", _VERSION, nonce, reason])


class _Nonces:
    """The nonces of requests taken within the window, with their sending
    times, oldest first; past ``MAX_NONCES`` the oldest are forgotten and
    nothing sent before them is taken any more (it might be one of them)."""

    __slots__ = ("_floor", "_seen")

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._floor = -1  # the latest sending time of a nonce forgotten for room

    def take(self, nonce: bytes, sent_ms: int, now_ms: int, window_ms: int) -> str | None:
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if oldest >= now_ms - window_ms and len(seen) < MAX_NONCES:
                break
            if oldest >= now_ms - window_ms:  # forgotten while still in the window
                self._floor = max(self._floor, oldest)
            seen.popitem(last=False)
        if abs(now_ms - sent_ms) > window_ms or sent_ms <= self._floor:
            return "stale"
        if nonce in seen:
            return "replayed"
        seen[nonce] = sent_ms
        return None


class NatsNodeTransport:
    """A node on NATS (``crdtkit node --nats URL --cluster NAME``): frames
    through a ``replication.nats.NatsEndpoint``, client requests on
    :func:`requests_subject`. ``peers`` and ``seeds`` are node ids;
    ``options`` go to ``nats.connect`` (TLS, credentials); ``clock`` (wall
    time in seconds) judges a request's freshness; ``start`` gives up if no
    server answered within ``connect_timeout`` seconds.

    Cost: see the module docstring.
    """

    def __init__(
        self,
        node_id: str,
        key: bytes,
        *,
        rng: Random,
        servers: Sequence[str],
        cluster: str,
        peers: Sequence[str] = (),
        seeds: Sequence[str] = (),
        options: Mapping[str, Any] | None = None,
        window: float = 60.0,
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 10.0,
    ) -> None:
        self._node = node_id
        self._key = key
        self._client_key = _client_key(key)
        self._nats = NatsEndpoint(node_id, key, servers=list(servers), cluster=cluster, rng=rng,
                                  options=dict(options or {}), start_timeout=connect_timeout)
        self._peers = [p for p in dict.fromkeys(peers) if p != node_id]
        self._seeds = [s for s in dict.fromkeys(seeds) if s != node_id and s not in self._peers]
        self._window_ms = int(window * 1000)
        self._servers = list(servers)
        self._clock = clock
        self._nonces = _Nonces()
        # (reply subject, nonce) -> a request's parts so far, oldest first
        self._assemblies: OrderedDict[tuple[str, bytes], _Assembly] = OrderedDict()
        self._assembled = 0  # their bytes
        self._requests: Requests | None = None
        self._subscription: Any = None
        self._in_flight = 0
        self._outbox: list[tuple[str, bytes]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusal_budget = (0, 0)  # (second, answered in it)
        self.refusals: Counter[str] = Counter()
        self.served = 0

    @property
    def endpoint(self) -> NatsEndpoint:
        """The NATS endpoint (frames between nodes). Cost: O(1)."""
        return self._nats

    @property
    def max_frame(self) -> int:
        """The replicator's frame size on NATS: a server's ``max_payload``
        (1 MiB by default; every server of the cluster must allow at least
        that) less room for the envelope and the snapshot header, the same
        on every node. Cost: O(1)."""
        return NATS_FRAME

    @property
    def peers(self) -> list[str]:
        """Static peers' node ids. Cost: O(peers)."""
        return list(self._peers)

    @property
    def seeds(self) -> list[str]:
        """Seeds' node ids. Cost: O(seeds)."""
        return list(self._seeds)

    @property
    def subject(self) -> str:
        """The subject this node takes client requests on. Cost: O(1)."""
        return requests_subject(self._nats.cluster, self._node)

    @property
    def address(self) -> str:
        """The request subject, for people (nothing dials it). Cost: O(1)."""
        return self.subject

    async def start(self, requests: Requests) -> None:
        """Connect, subscribe to frames and to requests. Cost: round trips
        to the server."""
        self._requests = requests
        log.info("%s: connecting to NATS at %s", self._node, redact(", ".join(self._servers)))
        await self._nats.start()  # gives up after its start_timeout
        self._subscription = await self._nats.connection.subscribe(
            self.subject, cb=self._on_request
        )
        log.info("%s: on NATS, requests on %s", self._node, self.subject)

    async def stop_serving(self) -> None:
        """Stop taking requests, send the answers ready. Cost: a round trip."""
        if self._subscription is not None and not self._nats.connection.is_closed:
            subscription, self._subscription = self._subscription, None
            try:
                await subscription.unsubscribe()
                await self._publish_all()
                await self._nats.connection.flush(timeout=2)
            except Exception as exc:  # the server went away: nothing more to tell
                log.warning("%s: closing NATS requests: %r", self._node, exc)

    def locate(self, node: str, address: str) -> None:
        """Nothing to do: NATS reaches a node by its id. Cost: O(1)."""

    def counters(self) -> list[tuple[str, int]]:
        """Frames and bytes (the endpoint's), requests served and refused.
        Cost: O(1)."""
        net = self._nats.stats
        return [
            ("frames_sent", net.sent),
            ("frames_received", net.received),
            ("bytes_sent", net.bytes_sent),
            ("bytes_received", net.bytes_received),
            ("frames_refused_by_transport", net.refusals),
            ("requests_served", self.served),
            ("requests_refused", sum(self.refusals.values())),
        ]

    def refused(self) -> dict[str, int]:
        """Requests (and frames) refused, by reason. Cost: O(reasons)."""
        out = {f"request {why}": n for why, n in self.refusals.items()}
        net = self._nats.stats
        for why in ("oversize", "malformed", "forged", "misaddressed", "impersonating",
                    "replayed", "refused"):
            if getattr(net, why):
                out[f"frame {why}"] = getattr(net, why)
        return out

    # -- requests ----------------------------------------------------------------------

    async def _on_request(self, msg: Any) -> None:
        # Runs in the subscription's task, one message at a time: it only
        # checks and dispatches; answers go out from callbacks and tasks.
        requests = self._requests
        assert requests is not None  # set by start()
        reply: str = msg.reply or ""
        data: bytes = msg.data
        try:
            if data[:4] == _PART:
                whole = self._part(reply, data)
                if whole is None:
                    return
                nonce, sent_ms, body = whole
            else:
                _, nonce, sent_ms, body = open_request(self._key, self.subject, reply, data)
        except (DecodeError, ValueError) as exc:
            self._refuse(reply, None, "bad MAC" if str(exc) == "bad MAC" else "not a request")
            return
        now_ms = int(self._clock() * 1000)
        why = self._nonces.take(nonce, sent_ms, now_ms, self._window_ms)
        if why is not None:
            self._refuse(reply, nonce, why)
            return
        if not reply:
            self.refusals["no reply subject"] += 1
            return
        try:
            kind, request, fields = protocol.parse(body)
        except DecodeError as exc:
            self._answer(reply, nonce, protocol.encode("error", 0, f"bad request: {exc}"[:500]))
            return
        if self._in_flight >= MAX_REQUESTS:
            self._answer(reply, nonce, protocol.encode("error", request, "busy: try again"))
            return
        self._in_flight += 1
        self.served += 1
        answer = requests.serve(kind, request, fields)
        future = answer if isinstance(answer, asyncio.Future) else asyncio.ensure_future(answer)
        future.add_done_callback(lambda done: self._answered(reply, nonce, done))

    def _part(self, reply: str, data: bytes) -> tuple[bytes, int, bytes] | None:
        """Keep one authenticated part of a request; the request's nonce,
        sending time and body once it is whole. Parts older than the window
        are dropped, and the oldest requests for room."""
        _, nonce, sent_ms, index, count, chunk = open_part(self._key, self.subject, reply, data)
        now_ms = int(self._clock() * 1000)
        assemblies = self._assemblies
        while assemblies:  # the oldest first: drop those out of the window
            oldest = next(iter(assemblies.values()))
            if now_ms - oldest.sent_ms <= self._window_ms:
                break
            self._drop(next(iter(assemblies)), "parts expired")
        if abs(now_ms - sent_ms) > self._window_ms:
            self._refuse(reply, nonce, "stale")
            return None
        which = (reply, nonce)
        held = assemblies.get(which)
        if held is None:
            held = assemblies[which] = _Assembly(sent_ms, count)
        if (held.sent_ms, held.count) != (sent_ms, count):
            raise DecodeError("parts of one request disagree")
        if index in held.chunks:
            return None  # a duplicate
        held.chunks[index] = chunk
        held.size += len(chunk)
        self._assembled += len(chunk)
        if held.size > protocol.MAX_MESSAGE:
            self._drop(which, "too large")
            return None
        while len(assemblies) > MAX_ASSEMBLIES or self._assembled > MAX_ASSEMBLY_BYTES:
            self._drop(next(iter(assemblies)), "parts dropped for room")
        if which not in assemblies or len(held.chunks) < count:
            return None
        self._drop(which, None)
        return nonce, sent_ms, b"".join(held.chunks[i] for i in range(count))

    def _drop(self, which: tuple[str, bytes], why: str | None) -> None:
        held = self._assemblies.pop(which)
        self._assembled -= held.size
        if why is not None:
            self.refusals[why] += 1

    def _answered(self, reply: str, nonce: bytes, done: asyncio.Future[bytes]) -> None:
        self._in_flight -= 1
        if done.cancelled():
            return
        if (exc := done.exception()) is not None:
            log.error("%s: serving a NATS request failed: %r", self._node, exc)
            return
        self._answer(reply, nonce, done.result())

    def _answer(self, reply: str, nonce: bytes, body: bytes) -> None:
        room = max(1024, self._nats.connection.max_payload - _ENVELOPE)
        for sealed in _answers(self._client_key, self._node, nonce, body, room):
            self._send(reply, sealed)

    def _refuse(self, reply: str, nonce: bytes | None, why: str) -> None:
        self.refusals[why] += 1
        second = int(time.monotonic())
        at, answered = self._refusal_budget
        if at != second:
            at, answered = second, 0
        if not reply or answered >= REFUSALS_PER_SECOND:
            self._refusal_budget = (at, answered)
            return
        self._refusal_budget = (at, answered + 1)
        if self.refusals[why] == 1 or answered == 0:
            log.warning("%s: refused a NATS request: %s", self._node, why)
        self._send(reply, _refusal(nonce, why))

    def _send(self, subject: str, data: bytes) -> None:
        # Answers made in one turn of the loop go out from one task.
        if not self._outbox:
            task = asyncio.get_running_loop().create_task(self._publish_all())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._outbox.append((subject, data))

    async def _publish_all(self) -> None:
        out, self._outbox = self._outbox, []
        connection = self._nats.connection
        for reply, data in out:
            try:
                await connection.publish(reply, data)
            except Exception as exc:  # closed, or a bad reply subject: the answer is lost
                self.refusals["answer not sent"] += 1
                log.warning("%s: an answer was not sent: %r", self._node, exc)


class NatsChannel:
    """What a :class:`~crdtkit.client.Client` talks to a node through over
    NATS: each ``send`` is a sealed request to the node's subject, answers
    come back on an inbox of this channel's, checked and put together from
    their chunks. Open one with :meth:`open`; ``recv`` raises
    :class:`RequestRefused` when the node refused a request (the wrong key),
    :class:`NodeUnreachable` when no node listens on its subject.

    Cost: two HMACs and a NATS message each way per request.
    """

    def __init__(self, connection: Any, key: bytes, node: str, subject: str,
                 *, owned: bool, clock: Callable[[], float] = time.time) -> None:
        self._connection = connection
        self._raw_key = key
        self._key = _client_key(key)
        self._node = node
        self._subject = subject
        self._owned = owned
        self._clock = clock
        self._name = f"client-{os.urandom(4).hex()}"
        self._inbox: str = connection.new_inbox()
        self._answers: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        # nonce -> (the request's body, chunks of its answer so far); every
        # nonce a request was sent under maps to the same body.
        self._asked: dict[bytes, tuple[_Asked, dict[int, bytes]]] = {}
        self._retries: set[asyncio.Task[None]] = set()
        self.resent = 0  # requests sent again after no answer came
        self._subscription: Any = None
        self._closing: set[asyncio.Task[None]] = set()
        self.dropped = 0  # answers that failed their checks
        # What went each way, as published and as arrived (for bench/).
        self.bytes_sent = self.bytes_received = self.messages_received = 0

    @classmethod
    async def open(
        cls,
        node: str,
        key: bytes,
        *,
        servers: Sequence[str],
        cluster: str,
        options: Mapping[str, Any] | None = None,
        connection: Any = None,
    ) -> NatsChannel:
        """A channel to ``node`` of ``cluster``: over ``connection`` (a
        connected nats-py client) if given, else a connection of its own to
        ``servers`` with ``options`` (closed with the channel).
        Cost: a connection and a subscription."""
        import nats
        import nats.errors

        owned = connection is None
        if connection is None:
            try:
                connection = await asyncio.wait_for(nats.connect(**{
                    "servers": list(servers), "connect_timeout": 5, "max_reconnect_attempts": 2,
                    "reconnect_time_wait": 0.5, "error_cb": _quiet, **dict(options or {})}),
                    CONNECT_TIMEOUT)
            except (nats.errors.Error, OSError) as exc:  # TimeoutError included
                why = f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"
                raise NatsUnavailable(
                    f"no NATS server of {redact(', '.join(servers))} took the connection "
                    f"within {CONNECT_TIMEOUT:g} s ({why}); check the URL, the user, password "
                    "or token, the credentials and the TLS options"
                ) from exc
        channel = cls(connection, key, node, requests_subject(cluster, node),
                      owned=owned)
        channel._subscription = await connection.subscribe(channel._inbox, cb=channel._on_answer)
        return channel

    async def send(self, body: bytes, *, alone: bool = False) -> None:
        """Send ``body`` as a sealed request, and again under a new nonce
        while no answer comes (:data:`RETRY_AFTER`); each is published at
        once, ``alone`` or not. Cost: O(len(body)) per sending."""
        asked = _Asked(body)
        await self._publish(asked)
        task = asyncio.get_running_loop().create_task(self._retry(asked))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _publish(self, asked: _Asked) -> None:
        nonce = os.urandom(_NONCE)
        sent_ms = int(self._clock() * 1000)
        sealed = [seal_request(self._raw_key, to=self._subject, reply=self._inbox,
                               client=self._name, nonce=nonce, sent_ms=sent_ms, body=asked.body)]
        room = self._connection.max_payload
        if len(sealed[0]) > room:  # in parts, each within max_payload
            if len(asked.body) > protocol.MAX_MESSAGE:
                raise RequestRefused(f"a request of {len(asked.body):,} bytes is over the most "
                                     f"a node takes ({protocol.MAX_MESSAGE:,})")
            sealed = seal_parts(self._raw_key, to=self._subject, reply=self._inbox,
                                client=self._name, nonce=nonce, sent_ms=sent_ms,
                                body=asked.body, room=max(1024, room - _ENVELOPE))
        self._asked[nonce] = (asked, {})
        asked.nonces.append(nonce)
        for data in sealed:
            await self._connection.publish(self._subject, data, reply=self._inbox)
            self.bytes_sent += len(data)

    async def _retry(self, asked: _Asked) -> None:
        for attempt in range(MAX_RETRIES):  # bounded: about two minutes in all
            await asyncio.sleep(RETRY_AFTER[min(attempt, len(RETRY_AFTER) - 1)])
            if asked.answered or self._subscription is None:
                return
            try:
                await self._publish(asked)
            except Exception:  # the connection is gone: recv says so
                return
            self.resent += 1
        self._forget(asked)  # the caller's deadline decides now

    async def recv(self) -> bytes:
        """The next answer's body. Cost: O(answer size)."""
        got = await self._answers.get()
        if isinstance(got, BaseException):
            raise got
        return got

    def close(self) -> None:
        """Unsubscribe (and close its own connection). Cost: O(1)."""
        loop = asyncio.get_event_loop()
        work = []
        if self._subscription is not None:
            subscription, self._subscription = self._subscription, None
            work.append(subscription.unsubscribe())
        if self._owned:
            work.append(self._connection.close())
        for retry in list(self._retries):
            retry.cancel()
        for job in work:
            task = loop.create_task(_quietly(job))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _on_answer(self, msg: Any) -> None:
        headers = getattr(msg, "headers", None) or {}
        if headers.get("Status") == "503":
            # No responders: every request waiting fails with this (the
            # client hands the error to all its callers), so none is resent.
            for asked, _ in self._asked.values():
                asked.answered = True
            self._asked.clear()
            self._answers.put_nowait(NodeUnreachable(
                f"no node listens on {self._subject} (not running, or another cluster name)"))
            return
        data: bytes = msg.data
        self.bytes_received += len(data)
        self.messages_received += 1
        try:
            # A refusal is unsealed (its requester may lack the key): it
            # opens with ["rf", ...]; an answer is sealed, its MAC after it.
            refusal = data[:4] == b"\x84\x62rf"
            raw = expect_list(codec.decode_plain(data if refusal else data[:-_MAC],
                                                 max_size=protocol.MAX_MESSAGE), "answer")
            if raw[:2] == ["rf", _VERSION] and len(raw) == 4:
                nonce, why = raw[2], raw[3]
                if nonce is None or nonce in self._asked:
                    if nonce is not None:
                        self._asked[nonce][0].answered = True
                        self._forget(self._asked[nonce][0])
                    self._answers.put_nowait(RequestRefused(
                        f"node {self._node} refused the request: {str(why)[:200]}"
                        + (" (is the cluster key the node's?)" if why == "bad MAC" else "")))
                return
            if len(raw) != 6 or raw[:2] != ["ra", _VERSION]:
                raise DecodeError("not an answer")
            _, _, nonce, index, count, chunk = raw
            mac = _mac(self._key, b"ra", self._node, payload=data[:-_MAC])
            if not hmac.compare_digest(mac, data[-_MAC:]) or type(nonce) is not bytes \
                    or nonce not in self._asked or type(chunk) is not bytes:
                raise DecodeError("not an answer to this client")
            count = expect_uint(count, "count", 1)
            index = expect_uint(index, "index")
            if index >= count or count * len(chunk) > protocol.MAX_MESSAGE * 2:
                raise DecodeError("bad chunk")
        except (DecodeError, ValueError):
            self.dropped += 1
            return
        asked, parts = self._asked[nonce]
        parts[index] = chunk
        if len(parts) == count:
            asked.answered = True
            self._forget(asked)  # a later answer to a resent copy is dropped
            self._answers.put_nowait(b"".join(parts[i] for i in range(count)))

    def _forget(self, asked: _Asked) -> None:
        for nonce in asked.nonces:
            self._asked.pop(nonce, None)


#: How a part's CBOR opens: an array of 8, then the text "rp".
_PART = b"\x88\x62rp"


@dataclass(slots=True)
class _Assembly:
    """The parts of one request that arrived so far."""

    sent_ms: int
    count: int
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


@dataclass(slots=True)
class _Asked:
    """One request, under every nonce it was sent with."""

    body: bytes
    nonces: list[bytes] = field(default_factory=list)
    answered: bool = False


async def _quiet(exc: Exception) -> None:
    # nats-py logs every connection error itself unless told where they go:
    # a client's calls raise what matters.
    return


async def _quietly(work: Awaitable[object]) -> None:
    try:
        await work
    except Exception:  # closing: nothing to do about it
        return
