"""Chandy-Lamport snapshots over the replicator's channels, sans-I/O.

A :class:`SnapshotNode` wraps a :class:`~replication.Replicator` as a
:class:`~replication.transport.Node` (the same ``tick``/``receive`` surface),
so any driver that runs replicas (the simulated network, the TCP runtime) runs
snapshots too, and the replicator stays unchanged.

The algorithm (Chandy and Lamport 1985) needs FIFO, lossless channels; gossip
runs over networks that lose, duplicate and reorder. So every frame carries
its sender's *colour*, as in Lai and Yang (1987): for each initiator, the
number of the latest of its snapshots the sender has recorded (an epoch
vector). Then:

- A node records its state (a :class:`~snapshot.cut.LocalState`) when it
  initiates a snapshot or first receives a frame of a snapshot it has not
  recorded, *before* handing that frame on: no message sent after a recording
  is ever reflected in a recorded state, whatever the network does, so the cut
  is consistent. Recording snapshot ``n`` of an initiator also records the
  ones before it that this node missed, at the same moment (equally valid).
- Recording, it sends a *marker* to every peer and repeats it each tick until
  that peer acknowledges (markers can be lost).
- The channel from a peer is recorded from the recording until the first frame
  from that peer that carries the snapshot; the replicator frames that arrive
  on it meanwhile are the messages in flight. Over a FIFO channel this is
  exactly Chandy-Lamport's channel state; over a lossy or reordering one, a
  frame lost or overtaken is missing from it. That cannot hide an operation
  from the cut's checks: every entry a frame carries was in its sender's state
  when sent, so it is covered by that sender's recorded clock.
- A node's part is complete when every incoming channel is closed; the
  snapshot is complete when every node's part is (:func:`gather`). A node that
  is down or cut off holds the snapshot up until it returns.

Several snapshots may be under way at once, each with its own
:class:`~snapshot.cut.SnapshotId`. Initiators are named by replica id, so a
restarted node (a new incarnation) numbers its snapshots afresh without
colliding with its old ones.

Wire form, around each replicator frame: ``["cl", 1, kind, epochs, body]``
with kind 0 (data: ``body`` is the replicator frame), 1 (marker: empty body)
or 2 (marker acknowledgement: ``body`` is the acknowledged epochs); epochs are
a flat ``[initiator, number, ...]`` list sorted by initiator.

Cost: wrapping a frame is O(frame size + initiators); recording is O(state
size) (a copy of the keyspace); a receive costs O(initiators + snapshots
under way) on top of the replicator's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from random import Random
from typing import TYPE_CHECKING

from crdts import codec
from crdts.base import expect_list
from crdts.errors import DecodeError
from replication.messages import MAX_FRAME, Entry
from replication.replicator import Replicator
from replication.transport import Outgoing
from snapshot.cut import (
    GlobalSnapshot,
    LocalState,
    SnapshotId,
    encode_epochs,
    parse_epochs,
    restore_replica,
)
from snapshot.errors import SnapshotIncomplete

if TYPE_CHECKING:
    from replication.simnet import SimulatedNetwork

__all__ = [
    "LocalRecording",
    "SnapshotNode",
    "SnapshotStats",
    "assemble",
    "gather",
    "take_snapshot",
]

_TAG = "cl"
_VERSION = 1
_DATA, _MARKER, _ACK = 0, 1, 2
#: Initiators a node keeps epochs for (every node that ever initiated a
#: snapshot, each incarnation apart); a frame that names more, or would take
#: this node over, is dropped as malformed, so a peer cannot grow the header
#: of every frame without bound.
MAX_INITIATORS = 4096
_MAX_SIZE = MAX_FRAME + 64 * 1024

Epochs = dict[str, int]


@dataclass(frozen=True, slots=True)
class LocalRecording:
    """One node's complete part of a snapshot: its recorded state and, per
    peer, the replicator frames that were in flight from that peer to it."""

    state: LocalState
    channels: Mapping[str, tuple[bytes, ...]]


@dataclass(slots=True)
class _Recording:
    state: LocalState
    open: set[str]  # peers whose channel to us is still being recorded
    frames: dict[str, list[bytes]] = field(default_factory=dict)


@dataclass(slots=True)
class SnapshotStats:
    """Counters of one node's snapshot layer."""

    recorded: int = 0  # snapshots this node recorded its state for
    markers: int = 0  # markers sent (first sends and repeats)
    malformed: int = 0  # frames that did not parse; dropped whole
    evicted: int = 0  # recordings dropped over ``max_open``


def _parse(frame: bytes) -> tuple[int, Epochs, bytes | Epochs]:
    raw = expect_list(codec.decode_plain(frame, max_size=_MAX_SIZE), "frame")
    if len(raw) != 5 or raw[0] != _TAG or raw[1] != _VERSION:
        raise DecodeError("not a snapshot-layer frame")
    kind, epochs, body = raw[2], parse_epochs(raw[3], MAX_INITIATORS), raw[4]
    if kind == _DATA and type(body) is bytes:
        return _DATA, epochs, body
    if kind == _MARKER and body == b"":
        return _MARKER, epochs, body
    if kind == _ACK:
        return _ACK, epochs, parse_epochs(body, MAX_INITIATORS)
    raise DecodeError(f"snapshot-layer frame: bad kind {kind!r:.20} or body")


class SnapshotNode:
    """A replica that can take part in Chandy-Lamport snapshots: a ``Node``
    wrapping a :class:`~replication.Replicator`.

    >>> from random import Random
    >>> from crdts import GCounter
    >>> from replication.simnet import SimulatedNetwork
    >>> net = SimulatedNetwork(seed=1)
    >>> for name in "abc":
    ...     net.add(SnapshotNode(Replicator(name, "abc", rng=Random(name))))
    >>> a = net.node("a").replica
    >>> _ = a.update("hits", GCounter, lambda c, me: c.increment(me, 2))
    >>> cut = take_snapshot(net, "a", max_rounds=10)
    >>> sorted(cut.states), cut.states["a"].state("hits").value
    (['a', 'b', 'c'], 2)

    ``max_open`` bounds the snapshots recorded here and not yet forgotten
    (the oldest is dropped beyond it).

    Cost: see the module docstring.
    """

    def __init__(
        self, replica: Replicator, *, max_open: int = 8, epochs: Mapping[str, int] | None = None
    ) -> None:
        if max_open < 1:
            raise ValueError("max_open is at least 1")
        self._replica = replica
        self._max_open = max_open
        # Snapshots recorded before a restart are never recorded again: the
        # restored state may hold updates from after that recording.
        self._epochs: Epochs = dict(epochs or {})
        self._acked: dict[str, Epochs] = {}  # peer -> our epochs it acknowledged
        self._recordings: dict[SnapshotId, _Recording] = {}
        self.stats = SnapshotStats()

    @property
    def node_id(self) -> str:
        """The wrapped replica's node id.

        >>> from random import Random
        >>> SnapshotNode(Replicator("a", [], rng=Random(1))).node_id
        'a'

        Cost: O(1).
        """
        return self._replica.node_id

    @property
    def refusals(self) -> int:
        """Frames refused here or by the replica (see ``Replicator.refusals``).

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", ["b"], rng=Random(1)))
        >>> _ = node.receive(0.0, "b", b"junk"); node.refusals
        1

        Cost: O(1).
        """
        return self.stats.malformed + self._replica.refusals

    @property
    def replica(self) -> Replicator:
        """The wrapped replica: update and read it directly.

        >>> from random import Random
        >>> SnapshotNode(Replicator("a", [], rng=Random(1))).replica.replica_id
        'a'

        Cost: O(1).
        """
        return self._replica

    @property
    def epochs(self) -> dict[str, int]:
        """The snapshots recorded here, as the latest number per initiator:
        what to keep, with the state, for a restart (``epochs=``).

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", [], rng=Random(1)))
        >>> _ = node.initiate(); node.epochs
        {'a': 1}

        Cost: O(initiators).
        """
        return dict(self._epochs)

    def checkpoint(self) -> LocalState:
        """This replica's state now, with the snapshots it has recorded: what
        to write down (``snapshot.files.write_checkpoint``) to restart from.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", [], rng=Random(1)))
        >>> _ = node.initiate()
        >>> node.checkpoint().epochs
        {'a': 1}

        Cost: O(state size).
        """
        return LocalState.capture(self._replica, self._epochs)

    @classmethod
    def restore(
        cls,
        local: LocalState,
        peers: Iterable[str],
        *,
        rng: Random,
        incarnation: int | None = None,
        max_open: int = 8,
        arriving: Iterable[Entry] = (),
        **options: int,
    ) -> SnapshotNode:
        """A node restarted from a checkpoint (or from its state in a cut),
        under a new incarnation, joined with the entries ``arriving`` (see
        ``snapshot.cut.restore_replica``).

        It keeps the checkpoint's epochs: a snapshot recorded before the
        checkpoint was written is never recorded again here, as the restored
        state may hold updates from after that recording. Such a snapshot
        lost this node's part in the crash, and stays incomplete.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", ["b"], rng=Random(1)))
        >>> taken = node.initiate()
        >>> back = SnapshotNode.restore(node.checkpoint(), ["b"], rng=Random(2), incarnation=1)
        >>> back.replica.replica_id, back.initiate()
        ('a~1', SnapshotId(initiator='a~1', number=1))

        Cost: O(size of the checkpoint).
        """
        replica = restore_replica(
            local, peers, rng=rng, incarnation=incarnation, arriving=arriving, **options
        )
        return cls(replica, max_open=max_open, epochs=local.epochs)

    # -- snapshots -------------------------------------------------------------------

    def initiate(self) -> SnapshotId:
        """Start a snapshot here: record this replica's state now. Markers go
        to the peers on the next :meth:`tick`.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", [], rng=Random(1)))
        >>> node.initiate(), node.initiate()
        (SnapshotId(initiator='a', number=1), SnapshotId(initiator='a', number=2))

        Cost: O(state size).
        """
        initiator = self._replica.replica_id
        number = self._epochs.get(initiator, 0) + 1
        self._record({initiator: number})
        return SnapshotId(initiator, number)

    def recording(self, snapshot: SnapshotId) -> LocalRecording | None:
        """This node's part of ``snapshot`` if it is complete, else None.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", [], rng=Random(1)))
        >>> node.recording(node.initiate()).state.node   # no peers: done at once
        'a'

        Cost: O(frames recorded).
        """
        rec = self._recordings.get(snapshot)
        if rec is None or rec.open:
            return None
        return LocalRecording(rec.state, {p: tuple(f) for p, f in sorted(rec.frames.items())})

    def forget(self, snapshot: SnapshotId) -> None:
        """Drop this node's part of ``snapshot`` (complete or not).

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", [], rng=Random(1)))
        >>> taken = node.initiate(); node.forget(taken); node.recording(taken) is None
        True

        Cost: O(1).
        """
        self._recordings.pop(snapshot, None)

    def _record(self, epochs: Mapping[str, int]) -> list[Outgoing]:
        # Every snapshot in ``epochs`` not recorded here yet, all at this one
        # moment: one copy of the state serves them all.
        new = {i: (self._epochs.get(i, 0), n) for i, n in epochs.items()
               if n > self._epochs.get(i, 0)}
        if not new:
            return []
        self._epochs.update({initiator: number for initiator, (_, number) in new.items()})
        state = LocalState.capture(self._replica, self._epochs)
        peers = self._replica.peers
        for initiator, (have, number) in new.items():
            for n in range(max(have + 1, number - self._max_open + 1), number + 1):
                self._recordings[SnapshotId(initiator, n)] = _Recording(state, set(peers))
                self.stats.recorded += 1
        while len(self._recordings) > self._max_open:
            del self._recordings[next(iter(self._recordings))]
            self.stats.evicted += 1
        return self._markers(peers)

    def _markers(self, peers: Iterable[str]) -> list[Outgoing]:
        frame = self._wrap(_MARKER, b"")
        out = [(peer, frame) for peer in peers]
        self.stats.markers += len(out)
        return out

    def _unacked(self) -> list[str]:
        mine = self._epochs
        return [
            peer
            for peer in self._replica.peers
            if any(
                self._acked.get(peer, {}).get(initiator, 0) < n for initiator, n in mine.items()
            )
        ]

    # -- the Node surface ------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """The replica's gossip round, plus markers to peers that have not
        acknowledged this node's latest recordings.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", ["b"], rng=Random(1)))
        >>> _ = node.initiate()
        >>> len(node.tick(0.0))    # a round opening with b, and a marker
        2

        Cost: the replica's tick, plus O(peers x initiators).
        """
        out = [(dest, self._wrap(_DATA, f)) for dest, f in self._replica.tick(now)]
        return out + self._markers(self._unacked()) if self._epochs else out

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        """Handle one frame from node ``sender``: record first if it carries a
        snapshot not yet recorded here, then record or close the channel from
        ``sender``, then hand a data frame to the replica. A frame that does
        not parse is dropped and counted; nothing of it is applied.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", ["b"], rng=Random(1)))
        >>> node.receive(0.0, "b", b"junk"), node.stats.malformed
        ([], 1)

        Cost: O(len(frame) + initiators + snapshots under way), plus the
        replica's receive.
        """
        try:
            kind, epochs, body = _parse(frame)
            if len(self._epochs.keys() | epochs.keys()) > MAX_INITIATORS:
                raise DecodeError("too many initiators")
        except DecodeError:
            self.stats.malformed += 1
            return []
        out = self._record(epochs)
        for snapshot, rec in self._recordings.items():
            if sender not in rec.open:
                continue
            if epochs.get(snapshot.initiator, 0) >= snapshot.number:
                rec.open.discard(sender)  # the sender recorded first: the channel's marker
            elif kind == _DATA:
                assert isinstance(body, bytes)
                rec.frames.setdefault(sender, []).append(body)
        if kind == _DATA:
            assert isinstance(body, bytes)
            replies = self._replica.receive(now, sender, body)
            out += [(dest, self._wrap(_DATA, f)) for dest, f in replies]
        elif kind == _MARKER:
            out.append((sender, self._wrap(_ACK, encode_epochs(epochs))))
        else:
            assert isinstance(body, dict)
            acked = self._acked.setdefault(sender, {})
            for initiator, number in body.items():
                if number > acked.get(initiator, 0):
                    acked[initiator] = number
        return out

    def _wrap(self, kind: int, body: bytes | list[object]) -> bytes:
        return codec.encode_plain([_TAG, _VERSION, kind, encode_epochs(self._epochs), body])


def gather(nodes: Iterable[SnapshotNode], snapshot: SnapshotId) -> GlobalSnapshot | None:
    """The snapshot assembled from every node's part, or None while some
    part is incomplete.

    >>> from random import Random
    >>> a = SnapshotNode(Replicator("a", ["b"], rng=Random(1)))
    >>> b = SnapshotNode(Replicator("b", ["a"], rng=Random(2)))
    >>> taken = a.initiate()
    >>> gather([a, b], taken) is None          # b has not heard of it yet
    True
    >>> marker = [frame for dest, frame in a.tick(0.0) if dest == "b"][-1]
    >>> ack = b.receive(0.0, "a", marker)      # b records; its channel from a closes
    >>> _ = a.receive(0.0, "b", ack[0][1])     # a's channel from b closes
    >>> sorted(gather([a, b], taken).states)
    ['a', 'b']

    Cost: O(nodes + frames recorded).
    """
    parts = []
    for node in nodes:
        part = node.recording(snapshot)
        if part is None:
            return None
        parts.append(part)
    return assemble(snapshot, parts)


def assemble(snapshot: SnapshotId, parts: Iterable[LocalRecording]) -> GlobalSnapshot:
    """The cut made of every node's complete part (however they were
    fetched: in process by :func:`gather`, over the network by a client).

    >>> from random import Random
    >>> node = SnapshotNode(Replicator("a", [], rng=Random(1)))
    >>> taken = node.initiate()
    >>> assemble(taken, [node.recording(taken)]).id
    SnapshotId(initiator='a', number=1)

    Cost: O(parts + channels).
    """
    states: dict[str, LocalState] = {}
    channels: dict[tuple[str, str], tuple[bytes, ...]] = {}
    for part in parts:
        states[part.state.node] = part.state
        for source, frames in part.channels.items():
            channels[(source, part.state.node)] = frames
    return GlobalSnapshot(snapshot, states, channels)


def take_snapshot(
    network: SimulatedNetwork, initiator: str, *, max_rounds: int = 100
) -> GlobalSnapshot:
    """Initiate a snapshot at node ``initiator`` of a simulated network of
    :class:`SnapshotNode` and run rounds until every node's part is complete.
    Raises SnapshotIncomplete after ``max_rounds`` (a node down or cut off).
    To take one mid-run instead, call :meth:`SnapshotNode.initiate` and poll
    :func:`gather` between rounds.

    >>> from random import Random
    >>> from replication.simnet import SimulatedNetwork
    >>> net = SimulatedNetwork(seed=1)
    >>> for name in "ab":
    ...     net.add(SnapshotNode(Replicator(name, "ab", rng=Random(name))))
    >>> take_snapshot(net, "b").id
    SnapshotId(initiator='b', number=1)

    Cost: O(rounds) of gossip, plus a state copy per node.
    """
    first = network.node(initiator)
    if not isinstance(first, SnapshotNode):
        raise TypeError(f"node {initiator!r} is not a SnapshotNode")
    snapshot = first.initiate()

    def nodes() -> list[SnapshotNode]:
        # Read afresh each time: a restart replaces a node's object.
        return [n for n in network.nodes.values() if isinstance(n, SnapshotNode)]

    rounds = network.run_until(lambda: gather(nodes(), snapshot) is not None, max_rounds)
    cut = gather(nodes(), snapshot)
    if rounds is None or cut is None:
        raise SnapshotIncomplete(f"snapshot {snapshot} incomplete after {max_rounds} rounds")
    return cut
