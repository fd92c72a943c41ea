"""A node on the built-in TCP runtime (``replication.tcp``): the
:class:`~crdtkit.transports.NodeTransport` that ``crdtkit node --listen``
runs. Peers and clients connect to the node's one port and authenticate
with the cluster key; a client may pipeline requests on its connection.

Cost: see ``replication.tcp``; a request costs its handling and a sealed
frame each way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import Awaitable, Mapping, Sequence
from random import Random

from crdtkit import protocol
from crdtkit.transports import (
    MAX_IN_FLIGHT,
    MAX_IN_FLIGHT_BYTES,
    Address,
    Requests,
    address_text,
    parse_address,
)
from crdts.errors import DecodeError
from replication.messages import DEFAULT_FRAME
from replication.tcp import Channel, Limits, PeerClosed, TcpEndpoint

__all__ = ["TcpNodeTransport"]

log = logging.getLogger("crdtkit.node")


class _Room:
    """What one client connection may have in flight: at most ``count``
    requests and, unless it is alone, at most ``size`` bytes of them."""

    __slots__ = ("_bytes", "_count", "_freed", "_size", "_used")

    def __init__(self, count: int, size: int) -> None:
        self._count, self._size = count, size
        self._used = self._bytes = 0
        self._freed: asyncio.Future[None] | None = None

    def take_now(self, size: int) -> bool:
        """Take room for a request of ``size`` bytes if there is some now
        (no coroutine per request, as :meth:`take` is)."""
        if self._used >= self._count or (self._used and self._bytes + size > self._size):
            return False
        self._used += 1
        self._bytes += size
        return True

    async def take(self, size: int) -> None:
        while self._used >= self._count or (self._used and self._bytes + size > self._size):
            self._freed = asyncio.get_running_loop().create_future()
            await self._freed
        self._used += 1
        self._bytes += size

    @property
    def empty(self) -> bool:
        """Whether no request is in flight. Cost: O(1)."""
        return not self._used

    def give(self, size: int) -> None:
        self._used -= 1
        self._bytes -= size
        if self._freed is not None and not self._freed.done():
            self._freed.set_result(None)


class TcpNodeTransport:
    """A node on the TCP runtime: peers dial ``listen`` (``advertise`` is
    what other members are told, if not ``listen``); ``peers`` maps static
    peers to their addresses, ``seeds`` are addresses to join through (the
    node answering there is taken once it proves it holds the key). Clients
    connect to the same port.

    >>> t = TcpNodeTransport("n1", bytes(32), rng=Random(1), listen=("127.0.0.1", 7001),
    ...                      peers={"n0": ("127.0.0.1", 7000)}, seeds=[("10.0.0.9", 7000)])
    >>> t.peers, t.seeds, t.address
    (['n0'], ['10.0.0.9:7000'], '127.0.0.1:7001')

    Cost: see ``replication.tcp``.
    """

    def __init__(
        self,
        node_id: str,
        key: bytes,
        *,
        rng: Random,
        listen: Address,
        peers: Mapping[str, Address] | None = None,
        seeds: Sequence[Address] = (),
        advertise: Address | None = None,
        limits: Limits | None = None,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
    ) -> None:
        peers = dict(peers or {})
        self._advertise = advertise
        self._listen = listen
        self._tcp = TcpEndpoint(
            node_id, key, rng=rng, listen=listen, peers=peers, limits=limits,
            server_ssl=server_ssl, client_ssl=client_ssl,
        )
        self._peers = list(peers)
        # Seeds by address are dialled under their address, and whoever
        # answers there with the cluster key is taken.
        own = {listen, advertise}
        self._seeds = [address_text(a) for a in seeds if a not in own]
        for name, address in zip(self._seeds, [a for a in seeds if a not in own], strict=True):
            self._tcp.add_peer(name, address, any_name=True)
        self._requests: Requests | None = None

    @property
    def endpoint(self) -> TcpEndpoint:
        """The TCP endpoint. Cost: O(1)."""
        return self._tcp

    @property
    def peers(self) -> list[str]:
        """Static peers' node ids. Cost: O(peers)."""
        return list(self._peers)

    @property
    def seeds(self) -> list[str]:
        """Seeds, named by their addresses. Cost: O(seeds)."""
        return list(self._seeds)

    @property
    def address(self) -> str:
        """``advertise``, else the address listened on (the real port once
        started). Cost: O(1)."""
        return address_text(self._advertise or self._tcp.address)

    @property
    def max_frame(self) -> int:
        """The replicator's default frame size (``Limits.max_frame`` leaves
        room for it). Cost: O(1)."""
        return DEFAULT_FRAME

    async def start(self, requests: Requests) -> None:
        """Listen; serve clients with ``requests``. Cost: O(1)."""
        self._requests = requests
        self._tcp.on_client = self._serve
        await self._tcp.start()

    async def stop_serving(self) -> None:
        """Clients are served until the endpoint closes. Cost: O(1)."""

    def locate(self, node: str, address: str) -> None:
        """Dial ``node`` at ``address`` (if it is ``host:port``). Cost: O(1)."""
        parsed = parse_address(address)
        if parsed is not None:
            self._tcp.add_peer(node, parsed)

    def counters(self) -> list[tuple[str, int]]:
        """The endpoint's counters. Cost: O(1)."""
        net = self._tcp.stats
        return [
            ("frames_sent", net.sent),
            ("frames_received", net.received),
            ("bytes_sent", net.bytes_sent),
            ("bytes_received", net.bytes_received),
            ("connections_refused", sum(net.refused.values())),
        ]

    def refused(self) -> dict[str, int]:
        """Connections refused, by reason. Cost: O(reasons)."""
        return dict(self._tcp.stats.refused)

    async def _serve(self, channel: Channel) -> None:
        # Requests on one connection are served concurrently (up to
        # MAX_IN_FLIGHT at a time), so that a client may pipeline: updates it
        # sends without waiting share commits. Answers go out as they are
        # ready, each with its request's number. An update is answered from
        # a callback on its commit, without a task of its own.
        requests = self._requests
        assert requests is not None  # set by start()
        name = channel.peer.node
        room = _Room(MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES)
        pending: set[asyncio.Task[None]] = set()

        def finished(size: int, task: asyncio.Task[None]) -> None:
            pending.discard(task)
            room.give(size)
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("%s: serving client %s failed: %r", requests.node_id, name, exc)
                channel.close()

        def answered(size: int, done: asyncio.Future[bytes]) -> None:
            room.give(size)
            if not done.cancelled():
                channel.send_nowait(done.result())

        def sent(size: int, answer: bytes) -> None:  # an update's, from its commit
            room.give(size)
            channel.send_nowait(answer, alone=room.empty)

        try:
            while True:
                data = await channel.recv()
                try:
                    kind, request, fields = protocol.parse(data)
                except DecodeError as exc:
                    log.warning("%s: client %s sent a bad message: %s", requests.node_id,
                                name, exc)
                    return
                size = len(data)
                if not room.take_now(size):
                    await room.take(size)
                answer = requests.serve(kind, request, fields, functools.partial(sent, size))
                if answer is None:  # an update: its commit calls sent()
                    if not channel.buffered:  # all read: its commit may start
                        requests.idle()
                    continue
                if isinstance(answer, asyncio.Future):
                    answer.add_done_callback(functools.partial(answered, size))
                    continue
                task = asyncio.create_task(_reply(channel, answer))
                pending.add(task)
                task.add_done_callback(functools.partial(finished, size))
        except PeerClosed:
            pass
        finally:
            # The client is gone: no one to answer. An update in flight still
            # commits (it is queued) and its answer is kept for a retry.
            for task in list(pending):
                task.cancel()
            channel.close()


async def _reply(channel: Channel, answer: Awaitable[bytes]) -> None:
    reply = await answer
    with contextlib.suppress(ConnectionError):
        await channel.send(reply)
