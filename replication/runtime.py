"""Driving a sans-I/O node over a real network, whatever the transport.

:class:`NodeRuntime` runs an unchanged :class:`~replication.transport.Node`
(a ``Replicator``, a ``SnapshotNode``, a ``MemberNode``) over any
:class:`~replication.transport.Transport` (``replication.tcp.TcpEndpoint``,
``replication.nats.NatsEndpoint``, one of your own that passes
:func:`replication.conformance.check_transport`): it calls ``tick`` every
``interval`` seconds of the event loop's clock and ``receive`` for every frame
the endpoint hands to its ``on_frame``, and sends what they return. It knows
the node only through the ``Node`` protocol and the endpoint only through the
``Transport`` protocol.

When the node's :attr:`~replication.transport.Node.refusals` grows while it
takes in a frame (a broken frame, or one that names another sender than the
transport authenticated), the runtime raises
:class:`~replication.transport.PeerMisbehaved` back into the transport, which
drops that sender's connection if it has one and counts the frame.

Cost: the node's, plus the endpoint's per frame; one timer per tick.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Generic, TypeVar

from replication.transport import Node, Outgoing, PeerMisbehaved, Transport

__all__ = ["NodeRuntime"]

#: The endpoint's own type, so ``runtime.endpoint`` keeps its own methods.
T = TypeVar("T", bound=Transport)


class NodeRuntime(Generic[T]):
    """Drives a sans-I/O ``node`` over ``endpoint``: ``tick`` every
    ``interval`` seconds, ``receive`` for every frame, and what they return
    sent on. Time is the event loop's clock. The endpoint is started by the
    caller and closed when :meth:`run` ends.

    >>> async def demo():
    ...     from random import Random
    ...     from crdts import GCounter
    ...     from replication.replicator import Replicator
    ...     from replication.tcp import TcpEndpoint
    ...     key, ids = bytes(32), ["a", "b"]
    ...     runs = [NodeRuntime(Replicator(i, ids, rng=Random(i)),
    ...                         TcpEndpoint(i, key, rng=Random(i)), interval=0.02) for i in ids]
    ...     for run in runs:
    ...         await run.endpoint.start()
    ...     runs[0].endpoint.add_peer("b", runs[1].endpoint.address)
    ...     runs[1].endpoint.add_peer("a", runs[0].endpoint.address)
    ...     _ = runs[0].node.update("hits", GCounter, lambda c, me: c.increment(me, 2))
    ...     stop = asyncio.Event()
    ...     tasks = [asyncio.create_task(run.run(stop)) for run in runs]
    ...     for _ in range(300):  # bounded: at most 3 s
    ...         if runs[1].node.get("hits") is not None:
    ...             break
    ...         await asyncio.sleep(0.01)
    ...     stop.set(); await asyncio.gather(*tasks)
    ...     return runs[1].node.get("hits").value
    >>> asyncio.run(demo())
    2

    Cost: the node's, plus the endpoint's per frame.
    """

    def __init__(self, node: Node, endpoint: T, *, interval: float = 0.5) -> None:
        if node.node_id != endpoint.node_id:
            raise ValueError("the node and its endpoint name different node ids")
        if not interval > 0:
            raise ValueError(f"the tick interval must be positive, got {interval!r}")
        self.node = node
        self.endpoint: T = endpoint
        self.interval = interval
        endpoint.on_frame = self._on_frame

    def _send(self, out: list[Outgoing]) -> None:
        for destination, frame in out:
            self.endpoint.send(destination, frame)

    def _on_frame(self, sender: str, frame: bytes) -> None:
        now = asyncio.get_running_loop().time()
        before = self.node.refusals
        self._send(self.node.receive(now, sender, frame))
        if self.node.refusals > before:
            # It sent what the node refused (another's name, a broken frame):
            # nothing of it was applied; the transport drops its connection.
            raise PeerMisbehaved(f"node {sender!r} sent a frame the node refused")

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set, then close the endpoint.

        >>> async def demo():
        ...     from random import Random
        ...     from replication.replicator import Replicator
        ...     from replication.simnet import SimulatedNetwork
        ...     endpoint = SimulatedNetwork(seed=0).endpoint("a")
        ...     runtime = NodeRuntime(Replicator("a", [], rng=Random(1)), endpoint)
        ...     stop = asyncio.Event(); stop.set()
        ...     await runtime.run(stop)   # set already: one tick, then close
        ...     return endpoint.receive()
        >>> asyncio.run(demo())
        []

        Cost: one tick per interval.
        """
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                self._send(self.node.tick(loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)
        finally:
            await self.endpoint.close()
