"""A deterministic in-process network with virtual time and seeded faults.

:class:`SimulatedNetwork` drives sans-I/O :class:`~replication.transport.Node`
objects the way a real network would, but every choice (tick order, loss,
duplication, delay) comes from one seeded ``random.Random`` and time is a float
that only moves when the simulation does: the same seed and the same nodes give
the same message trace, byte for byte, on every machine. Nothing here sleeps,
reads a clock or touches global random state.

Semantics:

- Time is measured in gossip rounds: a round lasts 1.0. :meth:`~SimulatedNetwork.run_round`
  calls ``tick(now)`` on every live node, in a seeded random order, at the start
  of the round, then delivers queued frames in ``(deliver_at, seq)`` order until
  the round ends (the interval is half-open). A frame sent in reply is queued
  the same way, so a request-reply exchange completes within the round when
  its delays fit in it (the default delays do).
- Faults (:class:`Faults`) apply per frame at send time: a frame is lost, or
  else sent once or (duplicated) twice, each copy with its own random delay.
  Channels are FIFO unless ``reorder`` is on.
- A frame is dropped when its destination is unknown, crashed, or in another
  partition group than its sender, checked both when it is sent and when it
  arrives (so a partition also drops what is in flight across it, and a frame
  from a node that crashed since it was sent still arrives).
- Accounting: at every moment
  ``sent + duplicated == delivered + dropped + in_flight``.

Exceptions raised by a node's ``tick`` or ``receive`` propagate: they are bugs
in the node, not network faults. Frames are opaque bytes, never inspected.

Cost: a send is one heap push, O(log q) for q frames in flight (plus hashing
the frame when tracing); a round is O(n log n) to order n ticks plus O(log q)
per frame delivered. Memory: the frames in flight, and one float per channel
(ordered pair of nodes) that has carried a frame.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NamedTuple, TypeAlias

from replication.transport import FrameHandler, Node, PeerMisbehaved

__all__ = [
    "ROUND",
    "Faults",
    "NetworkStats",
    "SimulatedEndpoint",
    "SimulatedNetwork",
    "TraceEvent",
]

#: Virtual time of one gossip round.
ROUND = 1.0

_Drop: TypeAlias = Literal["lost", "partitioned", "unreachable"]
_InFlight: TypeAlias = tuple[float, int, str, str, bytes]  # (deliver_at, seq, src, dst, frame)


@dataclass(frozen=True, slots=True)
class Faults:
    """The fault model, applied to every frame sent; all faults off by default.

    ``loss``, ``duplication`` and ``long_delay`` are probabilities per frame.
    ``delay`` is the range of the uniform delay in rounds; with probability
    ``long_delay`` a frame is instead held for ``long_delay_rounds``. With
    ``reorder`` off every channel is FIFO (a frame never overtakes an earlier
    one on the same ordered pair of nodes, as on TCP, so a long delay holds up
    the frames behind it); with it on each frame keeps its own delay and later
    frames overtake earlier ones.

    >>> Faults().loss, Faults().delay, Faults().reorder
    (0.0, (0.01, 0.1), False)
    >>> chaos = Faults(loss=0.3, duplication=0.05, reorder=True, long_delay=0.01)
    >>> Faults(loss=1.5)
    Traceback (most recent call last):
    ...
    ValueError: loss is a probability in [0, 1], got 1.5

    Cost: O(1).
    """

    loss: float = 0.0
    duplication: float = 0.0
    delay: tuple[float, float] = (0.01, 0.1)
    reorder: bool = False
    long_delay: float = 0.0
    long_delay_rounds: tuple[float, float] = (2.0, 5.0)

    def __post_init__(self) -> None:
        for name, p in (
            ("loss", self.loss),
            ("duplication", self.duplication),
            ("long_delay", self.long_delay),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {p!r}")
        for name, (low, high) in (
            ("delay", self.delay),
            ("long_delay_rounds", self.long_delay_rounds),
        ):
            if not 0.0 <= low <= high:
                raise ValueError(f"{name} is a range 0 <= min <= max, got {(low, high)!r}")


@dataclass(slots=True)
class NetworkStats:
    """Counters of one network; frames are counted per copy.

    ``sent`` counts frames handed to the network, ``duplicated`` the extra
    copies it made, ``delivered`` the copies handed to a receiver, and
    ``lost``, ``partitioned`` and ``unreachable`` (unknown or crashed
    destination) the copies dropped. ``bytes_sent_per_round[i]`` is what the
    nodes sent during round ``i``.

    >>> s = NetworkStats(sent=3, delivered=2, lost=1)
    >>> s.dropped
    1

    Cost: O(1) per update.
    """

    sent: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    partitioned: int = 0
    unreachable: int = 0
    bytes_sent: int = 0
    bytes_delivered: int = 0
    rounds: int = 0
    bytes_sent_per_round: list[int] = field(default_factory=list)
    #: Delivered copies an endpoint's ``on_frame`` refused (PeerMisbehaved).
    refused: int = 0

    @property
    def dropped(self) -> int:
        """Copies dropped for any reason.

        >>> NetworkStats(lost=2, partitioned=1, unreachable=1).dropped
        4

        Cost: O(1).
        """
        return self.lost + self.partitioned + self.unreachable


class TraceEvent(NamedTuple):
    """One step of a frame; ``kind`` is ``send``, ``duplicate``, ``deliver``,
    ``lost``, ``partitioned`` or ``unreachable``, and ``digest`` is a prefix of
    the frame's SHA-256, so traces compare cheaply and never hold the frames.

    >>> TraceEvent(0.0, "send", "a", "b", 2, "8f434346648f6b96")[1]
    'send'
    """

    time: float
    kind: str
    source: str
    destination: str
    length: int
    digest: str


class SimulatedNetwork:
    """Seeded virtual-time network of sans-I/O nodes (see the module docstring).

    >>> class Pinger:
    ...     def __init__(self, node_id, peer):
    ...         self.node_id, self.peer, self.heard = node_id, peer, []
    ...         self.refusals = 0  # a Node counts the frames it refuses
    ...     def tick(self, now):
    ...         return [(self.peer, b"ping")] if self.peer else []
    ...     def receive(self, now, sender, frame):
    ...         self.heard.append(frame)
    ...         return [(sender, b"pong")] if frame == b"ping" else []
    >>> net = SimulatedNetwork(seed=1, faults=Faults(duplication=0.5))
    >>> net.add(Pinger("a", "b")); net.add(Pinger("b", None))
    >>> net.run_rounds(3)
    >>> net.node("a").heard.count(b"pong") >= 3, net.now, net.in_flight
    (True, 3.0, 0)
    >>> s = net.stats
    >>> s.sent + s.duplicated == s.delivered + s.dropped + net.in_flight
    True

    Cost: see each method; memory O(frames in flight + channels used).
    """

    __slots__ = (
        "_channel_last",
        "_crashed",
        "_groups",
        "_mailboxes",
        "_nodes",
        "_now",
        "_queue",
        "_rng",
        "_seq",
        "faults",
        "stats",
        "trace",
    )

    def __init__(
        self,
        seed: int | random.Random,
        faults: Faults | None = None,
        *,
        trace: bool = False,
    ) -> None:
        """A network with no nodes at time 0.0. ``faults`` may be replaced
        between rounds (``net.faults = Faults(loss=0.3)``); with ``trace`` every
        frame's steps are appended to ``net.trace``.

        >>> net = SimulatedNetwork(seed=7, trace=True)
        >>> net.now, net.trace, net.stats.sent
        (0.0, [], 0)

        Cost: O(1).
        """
        self._rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        self.faults = faults if faults is not None else Faults()
        self.stats = NetworkStats()
        self.trace: list[TraceEvent] | None = [] if trace else None
        self._now = 0.0
        self._seq = 0
        self._queue: list[_InFlight] = []
        self._nodes: dict[str, Node] = {}
        self._mailboxes: dict[str, SimulatedEndpoint] = {}
        self._crashed: set[str] = set()
        self._groups: dict[str, int] = {}
        self._channel_last: dict[tuple[str, str], float] = {}

    # -- membership -------------------------------------------------------

    @property
    def now(self) -> float:
        """The current virtual time, in rounds.

        >>> SimulatedNetwork(seed=0).now
        0.0

        Cost: O(1).
        """
        return self._now

    @property
    def nodes(self) -> Mapping[str, Node]:
        """A read-only live view of the nodes by id, crashed ones included
        (endpoints are not nodes).

        >>> dict(SimulatedNetwork(seed=0).nodes)
        {}

        Cost: O(1).
        """
        return MappingProxyType(self._nodes)

    def node(self, node_id: str) -> Node:
        """The node with this id (crashed or not); ``KeyError`` if none.

        >>> SimulatedNetwork(seed=0).node("x")
        Traceback (most recent call last):
        ...
        KeyError: 'x'

        Cost: O(1).
        """
        return self._nodes[node_id]

    @property
    def in_flight(self) -> int:
        """Frame copies queued for delivery.

        >>> net = SimulatedNetwork(seed=0); a = net.endpoint("a"); _ = net.endpoint("b")
        >>> a.send("b", b"x"); net.in_flight
        1

        Cost: O(1).
        """
        return len(self._queue)

    def add(self, node: Node) -> None:
        """Join ``node`` to the network, live; ``ValueError`` if its id is taken
        (to replace a node, use :meth:`restart`).

        >>> net = SimulatedNetwork(seed=0); _ = net.endpoint("a")
        >>> class N:
        ...     node_id = "a"
        ...     def tick(self, now): return []
        ...     def receive(self, now, sender, frame): return []
        >>> net.add(N())
        Traceback (most recent call last):
        ...
        ValueError: node id 'a' is already on the network

        Cost: O(1).
        """
        node_id = node.node_id
        if node_id in self._nodes or node_id in self._mailboxes:
            raise ValueError(f"node id {node_id!r} is already on the network")
        self._nodes[node_id] = node

    def endpoint(self, node_id: str) -> SimulatedEndpoint:
        """The :class:`~replication.transport.Transport` endpoint for
        ``node_id``, created on first use, for code that pumps frames itself;
        time moves with :meth:`advance` or :meth:`run_round`.

        >>> net = SimulatedNetwork(seed=0)
        >>> a, b = net.endpoint("a"), net.endpoint("b")
        >>> a.send("b", b"hi"); net.advance(1.0); b.receive()
        [('a', b'hi')]

        Cost: O(1).
        """
        mailbox = self._mailboxes.get(node_id)
        if mailbox is None:
            if node_id in self._nodes:
                raise ValueError(f"node id {node_id!r} belongs to a Node, not an endpoint")
            mailbox = self._mailboxes[node_id] = SimulatedEndpoint(self, node_id)
        return mailbox

    # -- faults -----------------------------------------------------------

    def crash(self, node_id: str) -> None:
        """Stop the node: it neither ticks nor receives, and frames reaching it
        are dropped; frames it already sent still arrive. ``KeyError`` if unknown.

        >>> net = SimulatedNetwork(seed=0); a = net.endpoint("a")
        >>> net.crash("a")
        Traceback (most recent call last):
        ...
        KeyError: "no node 'a' (endpoints cannot crash)"

        Cost: O(1).
        """
        if node_id not in self._nodes:
            raise KeyError(f"no node {node_id!r} (endpoints cannot crash)")
        self._crashed.add(node_id)

    def restart(self, node: Node) -> None:
        """Put ``node`` (for example restored from an older copy of the state)
        in place of the node with the same id, live; a live node is crashed and
        restarted at once. ``KeyError`` if no node had that id.

        >>> class N:
        ...     def __init__(self, state): self.node_id, self.state = "a", state
        ...     def tick(self, now): return []
        ...     def receive(self, now, sender, frame): return []
        >>> net = SimulatedNetwork(seed=0); net.add(N(state=5)); net.crash("a")
        >>> net.restart(N(state=3)); net.is_crashed("a"), net.node("a").state
        (False, 3)

        Cost: O(1).
        """
        node_id = node.node_id
        if node_id not in self._nodes:
            raise KeyError(f"no node {node_id!r} to restart")
        self._nodes[node_id] = node
        self._crashed.discard(node_id)

    def is_crashed(self, node_id: str) -> bool:
        """Whether ``node_id`` is crashed (and not restarted since).

        >>> SimulatedNetwork(seed=0).is_crashed("a")
        False

        Cost: O(1).
        """
        return node_id in self._crashed

    def partition(self, groups: list[list[str]]) -> None:
        """Split the network: frames between different groups are dropped, on
        sending and on arrival. Nodes listed in no group (including ones added
        later) form one more group together. Replaces any earlier partition.

        >>> net = SimulatedNetwork(seed=0)
        >>> a, b = net.endpoint("a"), net.endpoint("b")
        >>> net.partition([["a"], ["b"]]); a.send("b", b"x"); net.stats.partitioned
        1
        >>> net.heal(); a.send("b", b"x"); net.advance(1.0); b.receive()
        [('a', b'x')]
        >>> net.partition([["a"], ["a", "b"]])
        Traceback (most recent call last):
        ...
        ValueError: node 'a' is in two partition groups

        Cost: O(ids listed).
        """
        assignment: dict[str, int] = {}
        for index, group in enumerate(groups):
            for node_id in group:
                if node_id in assignment:
                    raise ValueError(f"node {node_id!r} is in two partition groups")
                assignment[node_id] = index
        self._groups = assignment

    def heal(self) -> None:
        """End any partition; frames sent from now on cross freely.

        >>> net = SimulatedNetwork(seed=0); net.partition([["a"]]); net.heal()

        Cost: O(1).
        """
        self._groups = {}

    # -- time ---------------------------------------------------------------

    def send(self, source: str, destination: str, frame: bytes) -> None:
        """Hand a frame to the network as if ``source`` sent it now (no need for
        ``source`` to exist: useful to inject frames in tests).

        >>> net = SimulatedNetwork(seed=0); b = net.endpoint("b")
        >>> net.send("mallory", "b", b"\\x00"); net.advance(1.0); b.receive()
        [('mallory', b'\\x00')]

        Cost: O(log q) for q frames in flight.
        """
        stats = self.stats
        stats.sent += 1
        stats.bytes_sent += len(frame)
        if self.trace is not None:
            self._record("send", source, destination, frame)
        reason = self._unreachable(source, destination)
        if reason is not None:
            self._drop(reason, source, destination, frame)
            return
        faults = self.faults
        rng = self._rng
        if faults.loss and rng.random() < faults.loss:
            self._drop("lost", source, destination, frame)
            return
        self._schedule(source, destination, frame)
        if faults.duplication and rng.random() < faults.duplication:
            stats.duplicated += 1
            if self.trace is not None:
                self._record("duplicate", source, destination, frame)
            self._schedule(source, destination, frame)

    def run_round(self) -> None:
        """Tick every live node (in a seeded random order) at the start of the
        round, then deliver what falls due before the round ends.

        >>> net = SimulatedNetwork(seed=0); net.run_round(); net.now, net.stats.rounds
        (1.0, 1)

        Cost: O(n log n) for n nodes, plus O(log q) per frame sent or delivered.
        """
        stats = self.stats
        bytes_before = stats.bytes_sent
        order = sorted(node_id for node_id in self._nodes if node_id not in self._crashed)
        self._rng.shuffle(order)
        now = self._now
        for node_id in order:
            for destination, frame in self._nodes[node_id].tick(now):
                self.send(node_id, destination, frame)
        self._deliver_until(now + ROUND)
        stats.rounds += 1
        stats.bytes_sent_per_round.append(stats.bytes_sent - bytes_before)

    def run_rounds(self, k: int) -> None:
        """Run ``k`` rounds.

        >>> net = SimulatedNetwork(seed=0); net.run_rounds(3); net.now
        3.0

        Cost: k times :meth:`run_round`.
        """
        for _ in range(k):
            self.run_round()

    def run_until(self, predicate: Callable[[], bool], max_rounds: int) -> int | None:
        """Run rounds until ``predicate()`` holds; return the rounds taken (0 if
        it held at once), or None if it still fails after ``max_rounds``.

        >>> net = SimulatedNetwork(seed=0)
        >>> net.run_until(lambda: net.now >= 2, max_rounds=5)
        2
        >>> net.run_until(lambda: False, max_rounds=3), net.now
        (None, 5.0)

        Cost: up to ``max_rounds`` rounds and ``max_rounds + 1`` predicate calls.
        """
        if max_rounds < 0:
            raise ValueError(f"max_rounds is >= 0, got {max_rounds}")
        if predicate():
            return 0
        for taken in range(1, max_rounds + 1):
            self.run_round()
            if predicate():
                return taken
        return None

    def advance(self, dt: float) -> None:
        """Move time on by ``dt`` without ticking, delivering what falls due
        (and the replies it causes). Not counted as a round.

        >>> net = SimulatedNetwork(seed=0); net.advance(0.5); net.now
        0.5

        Cost: O(log q) per frame delivered.
        """
        if not dt >= 0.0:
            raise ValueError(f"time only moves forward, got dt={dt!r}")
        self._deliver_until(self._now + dt)

    # -- internals ------------------------------------------------------------

    def _schedule(self, source: str, destination: str, frame: bytes) -> None:
        faults = self.faults
        rng = self._rng
        low, high = faults.delay
        if faults.long_delay and rng.random() < faults.long_delay:
            low, high = faults.long_delay_rounds
        at = self._now + rng.uniform(low, high) * ROUND
        channel = (source, destination)
        last = self._channel_last.get(channel, at)
        if not faults.reorder and at < last:
            at = last  # equal times keep send order: the heap breaks ties by seq
        self._channel_last[channel] = max(at, last)
        heapq.heappush(self._queue, (at, self._seq, source, destination, frame))
        self._seq += 1

    def _deliver_until(self, end: float) -> None:
        queue = self._queue
        stats = self.stats
        while queue and queue[0][0] < end:
            at, _, source, destination, frame = heapq.heappop(queue)
            self._now = at  # replies are sent, and endpoints send, at the arrival time
            reason = self._unreachable(source, destination)
            if reason is not None:
                self._drop(reason, source, destination, frame)
                continue
            stats.delivered += 1
            stats.bytes_delivered += len(frame)
            if self.trace is not None:
                self._record("deliver", source, destination, frame)
            node = self._nodes.get(destination)
            if node is None:
                self._mailboxes[destination]._take(source, frame)
                continue
            for reply_to, reply in node.receive(at, source, frame):
                self.send(destination, reply_to, reply)
        self._now = end

    def _unreachable(self, source: str, destination: str) -> _Drop | None:
        if destination in self._crashed or (
            destination not in self._nodes and destination not in self._mailboxes
        ):
            return "unreachable"
        groups = self._groups
        if groups and groups.get(source, -1) != groups.get(destination, -1):
            return "partitioned"
        return None

    def _drop(self, reason: _Drop, source: str, destination: str, frame: bytes) -> None:
        stats = self.stats
        if reason == "lost":
            stats.lost += 1
        elif reason == "partitioned":
            stats.partitioned += 1
        else:
            stats.unreachable += 1
        if self.trace is not None:
            self._record(reason, source, destination, frame)

    def _record(self, kind: str, source: str, destination: str, frame: bytes) -> None:
        assert self.trace is not None
        digest = hashlib.sha256(frame).hexdigest()[:16]
        self.trace.append(TraceEvent(self._now, kind, source, destination, len(frame), digest))


class SimulatedEndpoint:
    """A :class:`~replication.transport.Transport` on a :class:`SimulatedNetwork`
    (get one from :meth:`SimulatedNetwork.endpoint`). Frames it sends go through
    the network's fault model; frames for it go to its ``on_frame`` if set,
    else wait in its inbox until :meth:`receive`. It needs no ``start``;
    after ``close`` it leaves the network (frames to it are unreachable, its
    own sends are dropped as unreachable too).

    >>> net = SimulatedNetwork(seed=0); a = net.endpoint("a")
    >>> a.node_id, a.receive()
    ('a', [])
    """

    __slots__ = ("_closed", "_inbox", "_network", "_node_id", "on_frame")

    def __init__(self, network: SimulatedNetwork, node_id: str) -> None:
        """Use :meth:`SimulatedNetwork.endpoint`, which also registers it.

        >>> SimulatedNetwork(seed=0).endpoint("a").node_id
        'a'

        Cost: O(1).
        """
        self._network = network
        self._node_id = node_id
        self._inbox: list[tuple[str, bytes]] = []
        self._closed = False
        self.on_frame: FrameHandler | None = None

    @property
    def node_id(self) -> str:
        """The id frames from this endpoint carry as their sender.

        >>> SimulatedNetwork(seed=0).endpoint("a").node_id
        'a'

        Cost: O(1).
        """
        return self._node_id

    async def start(self) -> None:
        """Nothing to do: the endpoint is on the network from its creation.

        >>> import asyncio
        >>> asyncio.run(SimulatedNetwork(seed=0).endpoint("a").start())

        Cost: O(1).
        """

    async def close(self) -> None:
        """Leave the network: frames to this node id are dropped as
        unreachable from now on, and so are this endpoint's sends.

        >>> import asyncio
        >>> net = SimulatedNetwork(seed=0); a, b = net.endpoint("a"), net.endpoint("b")
        >>> asyncio.run(b.close()); a.send("b", b"x"); b.send("a", b"y")
        >>> net.advance(1.0); a.receive(), net.stats.unreachable
        ([], 2)

        Cost: O(1).
        """
        self._closed = True
        if self._network._mailboxes.get(self._node_id) is self:
            del self._network._mailboxes[self._node_id]
        self._inbox = []

    def send(self, destination: str, frame: bytes) -> None:
        """Send at the network's current time; never raises for an unknown or
        unreachable destination (the frame is dropped and counted).

        >>> net = SimulatedNetwork(seed=0); net.endpoint("a").send("nowhere", b"x")
        >>> net.stats.unreachable
        1

        Cost: as :meth:`SimulatedNetwork.send`.
        """
        if self._closed:
            stats = self._network.stats
            stats.sent += 1  # handed to the network, and dropped at once
            stats.unreachable += 1
            return
        self._network.send(self._node_id, destination, frame)

    def receive(self) -> list[tuple[str, bytes]]:
        """The ``(sender, frame)`` pairs delivered since the last call, in
        arrival order.

        >>> SimulatedNetwork(seed=0).endpoint("a").receive()
        []

        Cost: O(1).
        """
        inbox, self._inbox = self._inbox, []
        return inbox

    def _take(self, sender: str, frame: bytes) -> None:
        if self.on_frame is None:
            self._inbox.append((sender, frame))
            return
        try:
            self.on_frame(sender, frame)
        except PeerMisbehaved:
            self._network.stats.refused += 1  # no connection to drop: counted
