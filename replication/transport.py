"""What a network gives a replica, and what a replica gives a network.

The replicator is sans-I/O (as h11 is for HTTP): a :class:`Node` takes the time
and the frames that arrived, and returns the frames it wants sent, as
``(destination node id, frame bytes)`` pairs. It never sleeps, reads a clock or
touches a socket. A driver feeds it: :class:`~replication.simnet.SimulatedNetwork`
in tests and the demo (virtual time, seeded faults), an asyncio TCP runtime
between processes. Both drive the same node code unchanged.

A :class:`Transport` is the driver-side half: an endpoint that sends a frame to
a node and hands over the frames that arrived for it. One conformance suite
(``tests/test_transport_conformance.py``) runs against every transport.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias, runtime_checkable

__all__ = ["Node", "Outgoing", "Transport"]

#: A frame to send: ``(destination node id, frame bytes)``.
Outgoing: TypeAlias = tuple[str, bytes]


@runtime_checkable
class Node(Protocol):
    """A sans-I/O participant: time and frames in, frames out."""

    @property
    def node_id(self) -> str:
        """The network address of this node: stable across restarts."""
        ...

    def tick(self, now: float) -> list[Outgoing]:
        """Called once per gossip interval; returns the frames to send."""
        ...

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        """Called for each frame that arrived from node ``sender``; returns the
        frames to send in answer. A malformed frame is dropped and counted by
        the node, never raised to the driver."""
        ...


@runtime_checkable
class Transport(Protocol):
    """One node's endpoint on a network."""

    @property
    def node_id(self) -> str:
        """The node this endpoint belongs to."""
        ...

    def send(self, destination: str, frame: bytes) -> None:
        """Queue ``frame`` for node ``destination``. Never blocks, never raises
        for an unreachable or unknown destination: the frame is simply lost,
        as on a real network."""
        ...

    def receive(self) -> list[tuple[str, bytes]]:
        """The ``(sender, frame)`` pairs that have arrived since the last call."""
        ...
