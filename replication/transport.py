"""What a network gives a replica, and what a replica gives a network.

The replicator is sans-I/O (as h11 is for HTTP): a :class:`Node` takes the time
and the frames that arrived, and returns the frames it wants sent, as
``(destination node id, frame bytes)`` pairs. It never sleeps, reads a clock or
touches a socket. A driver feeds it: :class:`~replication.simnet.SimulatedNetwork`
in tests and the demo (virtual time, seeded faults), and
:class:`~replication.runtime.NodeRuntime` between processes, over any
:class:`Transport` (asyncio TCP in ``replication.tcp``, NATS in
``replication.nats``). All of them drive the same node code unchanged.

A :class:`Transport` is the driver-side half: one node's endpoint, which sends
a frame to a node and hands over the frames that arrived for it, either to its
``on_frame`` callback as they come or, with none set, to :meth:`Transport.receive`.
What every transport promises is checked by one public conformance suite,
:func:`replication.conformance.check_transport`, which every transport here
passes (``tests/test_transport_conformance.py``).

Trust: a transport names the sender of each frame as it authenticated it (a
TCP handshake, a NATS frame's MAC); the node then refuses a frame whose
contents claim another sender, and counts it in :attr:`Node.refusals`. A driver
that sees the count grow after a frame raises :class:`PeerMisbehaved` from
``on_frame``: the transport drops the sender's connection if it has one, and
counts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable

__all__ = ["FrameHandler", "Node", "Outgoing", "PeerMisbehaved", "Transport"]

#: A frame to send: ``(destination node id, frame bytes)``.
Outgoing: TypeAlias = tuple[str, bytes]

#: ``on_frame(sender, frame)``: called by a transport for each frame that arrives.
FrameHandler: TypeAlias = Callable[[str, bytes], None]


class PeerMisbehaved(Exception):
    """Raised by an ``on_frame`` callback: the frame's sender broke the rules
    (the node refused what it sent). The transport counts it and, if it holds
    a connection from that sender, closes it.

    >>> raise PeerMisbehaved("node 'x' sent a frame the node refused")
    Traceback (most recent call last):
    ...
    replication.transport.PeerMisbehaved: node 'x' sent a frame the node refused
    """


@runtime_checkable
class Node(Protocol):
    """A sans-I/O participant: time and frames in, frames out."""

    @property
    def node_id(self) -> str:
        """The network address of this node: stable across restarts."""
        ...

    @property
    def refusals(self) -> int:
        """Frames refused so far (malformed, or not acceptable from the
        sender the transport named): never decreases. A driver compares it
        before and after :meth:`receive` to tell a misbehaving sender."""
        ...

    def tick(self, now: float) -> list[Outgoing]:
        """Called once per gossip interval; returns the frames to send."""
        ...

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        """Called for each frame that arrived from node ``sender``; returns the
        frames to send in answer. A malformed frame is dropped and counted in
        :attr:`refusals`, never raised to the driver."""
        ...


@runtime_checkable
class Transport(Protocol):
    """One node's endpoint on a network.

    Lifecycle: ``await start()`` before the first send (connect, listen,
    subscribe), ``await close()`` at the end (idempotent; afterwards sends are
    dropped and nothing more arrives). Both run on the event loop that the
    endpoint then lives on; ``send`` and ``receive`` are synchronous and are
    called from that loop's thread.
    """

    #: Called as ``on_frame(sender, frame)`` for each frame that arrives, in
    #: place of queueing it for :meth:`receive`. It may raise
    #: :class:`PeerMisbehaved`; any other exception is a bug in the driver.
    on_frame: FrameHandler | None

    @property
    def node_id(self) -> str:
        """The node this endpoint belongs to."""
        ...

    async def start(self) -> None:
        """Connect: from now on frames can be sent and arrive."""
        ...

    async def close(self) -> None:
        """Disconnect and release everything the endpoint holds."""
        ...

    def send(self, destination: str, frame: bytes) -> None:
        """Queue ``frame`` for node ``destination``. Never blocks, never raises
        for an unreachable or unknown destination or a frame over the
        transport's size limit: the frame is simply lost (and counted), as on
        a real network."""
        ...

    def receive(self) -> list[tuple[str, bytes]]:
        """The ``(sender, frame)`` pairs that have arrived since the last call
        (when no ``on_frame`` is set)."""
        ...
