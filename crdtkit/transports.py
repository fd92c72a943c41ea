"""How a node process is reached: the seam between :class:`~crdtkit.node.NodeService`
and a transport.

A :class:`NodeTransport` carries two things for a node: frames between nodes
(its :attr:`~NodeTransport.endpoint`, a ``replication.transport.Transport``
that ``NodeRuntime`` drives) and requests from clients (the client protocol,
``crdtkit.protocol``), which it hands to the node's :class:`Requests` and
answers. The node never learns which transport it runs on: the caller
(``crdtkit.serve``) picks one and passes it in.

- ``crdtkit.tcpnode.TcpNodeTransport``: the built-in TCP runtime (``replication.tcp``);
  clients connect to the node's port, authenticate with the cluster key and
  may pipeline requests on one connection.
- ``crdtkit.natsnode.NatsNodeTransport``: NATS; clients send each request
  as a NATS request, sealed with the cluster key, to the node's subject.

Membership needs three things of a transport: the address a member record
carries (:attr:`~NodeTransport.address`), where a seed is reached (the
destination names in :attr:`~NodeTransport.seeds`), and what to do when a
member's address is learnt (:meth:`~NodeTransport.locate`).

Cost: as the transport's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, overload

from replication.transport import Transport

__all__ = [
    "MAX_IN_FLIGHT",
    "MAX_IN_FLIGHT_BYTES",
    "NodeTransport",
    "Requests",
    "address_text",
    "parse_address",
]

#: Requests one client connection may have in flight at once (pipelining),
#: and their bytes in all: a deep pipeline fills commits while the last
#: one's answers travel back (1,024 served 14,000 updates/s here, 256 about
#: 9,500), and the bytes bound what one connection can make a node hold.
MAX_IN_FLIGHT = 1024
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024

Address = tuple[str, int]


class Requests(Protocol):
    """What a node gives its transport: the client protocol's handling."""

    @property
    def node_id(self) -> str:
        """The node's id."""
        ...

    @overload
    def serve(self, kind: str, request: int, fields: list[object]) -> Awaitable[bytes]: ...

    @overload
    def serve(self, kind: str, request: int, fields: list[object],
              send: Callable[[bytes], None]) -> Awaitable[bytes] | None: ...

    def serve(self, kind: str, request: int, fields: list[object],
              send: Callable[[bytes], None] | None = None) -> Awaitable[bytes] | None:
        """The answer to one parsed request (``crdtkit.protocol.parse``): a
        future (an update, answered from its commit) or a coroutine; given
        ``send``, None for an update, whose commit hands its answer to
        ``send`` (one callback and one turn of the event loop fewer)."""
        ...

    def idle(self) -> None:
        """The transport served every request it had at hand and waits to
        read more (optional to call: a commit may start a turn of the event
        loop sooner)."""
        ...


class NodeTransport(Protocol):
    """A node's way onto a network: frames to peers, requests from clients."""

    @property
    def endpoint(self) -> Transport:
        """The frame transport ``NodeRuntime`` drives (and closes)."""
        ...

    @property
    def peers(self) -> list[str]:
        """Static peers' node ids."""
        ...

    @property
    def seeds(self) -> list[str]:
        """Destinations to ask to join (membership sends its state there)."""
        ...

    @property
    def address(self) -> str:
        """Where this node is reached, as its member record says (final
        once :meth:`start` returned)."""
        ...

    @property
    def max_frame(self) -> int:
        """The replicator's frame size this transport carries (the same on
        every node of a cluster)."""
        ...

    async def start(self, requests: Requests) -> None:
        """Open the endpoint and serve clients' requests with ``requests``."""
        ...

    async def stop_serving(self) -> None:
        """Stop taking client requests (the endpoint is closed by its runtime)."""
        ...

    def locate(self, node: str, address: str) -> None:
        """A member ``node`` is reached at ``address`` (its record's)."""
        ...

    def counters(self) -> list[tuple[str, int]]:
        """Frames and bytes sent and received, refusals: the node's stats."""
        ...

    def refused(self) -> dict[str, int]:
        """What was refused, by reason (for the log)."""
        ...


def address_text(address: Address) -> str:
    """``host:port`` (IPv6 hosts in brackets).

    >>> address_text(("::1", 7001)), address_text(("127.0.0.1", 7001))
    ('[::1]:7001', '127.0.0.1:7001')

    Cost: O(1).
    """
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> Address | None:
    """The address in ``host:port`` text, or None.

    >>> parse_address("[::1]:7001"), parse_address("n3")
    (('::1', 7001), None)

    Cost: O(len(text)).
    """
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) <= 65535:
        return None
    return host.strip("[]"), int(port)
