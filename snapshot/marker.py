"""Chandy-Lamport snapshots over the replicator's channels, sans-I/O.

A :class:`SnapshotNode` wraps a :class:`~replication.Replicator` as a
:class:`~replication.transport.Node` (the same ``tick``/``receive`` surface),
so any driver that runs replicas (the simulated network, the TCP runtime) runs
snapshots too, and the replicator stays unchanged.

The algorithm (Chandy and Lamport 1985) needs FIFO, lossless channels; gossip
runs over networks that lose, duplicate and reorder. So every frame carries
its sender's *colour*, as in Lai and Yang (1987): one number, how many
snapshots of the cluster the sender has recorded. Snapshots are numbered
cluster-wide: snapshot ``n`` is the cut where each node turned colour ``n``.
Then:

- A node records its state (a :class:`~snapshot.cut.LocalState`) when it
  initiates a snapshot (its colour goes up by one) or first receives a frame
  whose colour is above its own, *before* handing that frame on: no message
  sent after a recording is ever reflected in a recorded state, whatever the
  network does, so the cut is consistent. A jump of several colours records
  the snapshots this node missed at the same moment (equally valid). A node
  never records a colour twice: its colour only goes up, and a restarted
  node keeps the colour of its checkpoint.
- *A node's part is its recorded state*, complete as soon as it is
  recorded. For state-based CRDTs the channels add nothing: a frame in
  flight across the cut carries only entries that were in its sender's state
  when it was sent, so they are in the sender's recorded state, and the join
  of the recorded states already holds everything in flight (the checks of
  ``snapshot.sec`` see the same operations). The colour rides on every
  gossip frame, so every node records within the rounds a rumour takes to
  spread (O(log N)); an initiator also sends one *marker* to each peer, once,
  and each answers it, to hurry that along: at most 2(N - 1) frames of the
  snapshot's own, where Chandy-Lamport sends a marker and an acknowledgement
  on each of the N(N - 1) channels.
- With ``channels=True`` a part also holds Chandy-Lamport's channel state:
  recording, a node sends a marker to every peer and repeats it each tick
  until that peer answers with a frame of its colour, and the channel from
  a peer is recorded from the recording until the first frame from that
  peer of the snapshot's colour; the replicator frames that arrive on it
  meanwhile are the messages in flight. Over a FIFO channel this is exactly
  Chandy-Lamport's channel state; over a lossy or reordering one, a frame
  lost or overtaken is missing from it, which cannot hide an operation from
  the cut's checks (the argument above).
- *Snapshots follow membership.* With ``channels=True``, the members a
  node's part waits for are its replica's peers when it recorded that are
  peers still: a node removed since (``Replicator.remove_peer``) never holds
  a part up, nor does a node that was never a peer (a visitor is answered,
  and its colour honoured, but its channel is not waited for). Without
  channels a part waits for nobody. :func:`take_snapshot` waits for the
  parts of the initiator and its peers at the start that are peers still. A
  member that is down holds the snapshot up until it returns or is removed.
- *Finished snapshots leave nothing behind.* Two initiators that start a
  snapshot at the same colour share one cut, so the colour is one number
  whatever the number of initiators (every incarnation of every node may
  initiate), and no state is kept per initiator: a frame's header is the
  colour, a peer owed a marker is one set, and once every channel is closed
  and every marker sent (and, with channels, answered), a round costs what
  it cost before any snapshot. Only the colour grows, as a CBOR integer: one
  byte up to 23, three up to 65,535.

Several snapshots may be under way at once. A :class:`~snapshot.cut.SnapshotId`
names a snapshot by its initiator and its colour, so a restarted node (a new
incarnation) initiates under its new replica id.

Wire form, around each replicator frame: ``["cl", 3, kind, colour, body]``
with kind 0 (data: ``body`` is the replicator frame, nested as CBOR
structure: its bytes follow the header as they are), 1 (marker) or 2 (marker
acknowledgement), both with an empty byte string as body. The header is read
by hand and the frame after it is handed to the replica, which decodes it
once (version 2 carried the frame as a byte string, so every frame was
decoded here and again by the replica). Versions 1 (a per-initiator epoch
vector) and 2 are refused.

Cost: wrapping a frame is O(frame size); recording is O(state size) (a copy
of the keyspace); a receive costs O(snapshots with channels open) on top of
the replicator's, and a tick O(peers) while markers are owed or channels
open (nothing after).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from random import Random
from typing import TYPE_CHECKING

from crdts import codec
from crdts.base import expect_uint
from crdts.errors import DecodeError
from replication.messages import MAX_FRAME, Entry
from replication.replicator import Replicator
from replication.transport import Outgoing
from snapshot.cut import MAX_COLOUR, GlobalSnapshot, LocalState, SnapshotId, restore_replica
from snapshot.errors import SnapshotError, SnapshotIncomplete

if TYPE_CHECKING:
    from replication.simnet import SimulatedNetwork

__all__ = [
    "MAX_COLOUR",
    "LocalRecording",
    "SnapshotNode",
    "SnapshotStats",
    "assemble",
    "gather",
    "take_snapshot",
]

_TAG = "cl"
_VERSION = 3
_DATA, _MARKER, _ACK = 0, 1, 2
_MAX_SIZE = MAX_FRAME + 64 * 1024
#: Every frame of this layer starts so: an array of five, "cl", the version.
_HEAD = codec.encode_plain([_TAG, _VERSION, 0, 0, 0])[:5]
_EMPTY = codec.encode_plain(b"")


@dataclass(frozen=True, slots=True)
class LocalRecording:
    """One node's complete part of a snapshot: its recorded state and, per
    peer, the replicator frames that were in flight from that peer to it
    (recorded only by a node with ``channels=True``; empty otherwise)."""

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
    answers: int = 0  # markers answered (acknowledgements sent)
    malformed: int = 0  # frames that did not parse; dropped whole
    evicted: int = 0  # recordings dropped over ``max_open``
    departed: int = 0  # channels no longer waited for: their peer was removed


def _colour(x: object, what: str) -> int:
    colour = expect_uint(x, what)
    if colour > MAX_COLOUR:
        raise DecodeError(f"{what}: over the largest colour, {MAX_COLOUR}")
    return colour


def _parse(frame: bytes) -> tuple[int, int, bytes]:
    """``(kind, colour, body)`` of a frame of this layer; the body of a data
    frame is the replicator frame (checked by the replica). Cost: O(1) and a
    copy of the body."""
    if len(frame) > _MAX_SIZE or not frame.startswith(_HEAD) or len(frame) < 8:
        raise DecodeError("not a snapshot-layer frame")
    kind, head = frame[5], frame[6]
    if head < 24:
        colour, at = head, 7
    elif 24 <= head <= 27:  # an int with a 1-, 2-, 4- or 8-byte argument
        at = 7 + (1 << (head - 24))
        colour = int.from_bytes(frame[7:at], "big")
        if at > len(frame) or colour < (24 if head == 24 else 1 << (8 << (head - 25))):
            raise DecodeError("colour: not a canonical unsigned int")
    else:
        raise DecodeError("colour: expected an unsigned int")
    colour = _colour(colour, "colour")
    body = frame[at:]
    if (kind == _DATA and body) or (kind in (_MARKER, _ACK) and body == _EMPTY):
        return kind, colour, body
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
    (the oldest is dropped beyond it). ``colour`` is the colour to start
    from: a restarted node's checkpoint's (see :meth:`restore`).
    ``channels`` records the frames in flight on each channel too
    (Chandy-Lamport's channel state, at the price of a marker and an
    answer on every channel); by default a part is the recorded state alone,
    complete as soon as it is recorded, and only an initiator sends markers,
    once to each peer (see the module docstring).

    Cost: see the module docstring.
    """

    def __init__(
        self, replica: Replicator, *, max_open: int = 8, colour: int = 0, channels: bool = False
    ) -> None:
        if max_open < 1:
            raise ValueError("max_open is at least 1")
        if not 0 <= colour <= MAX_COLOUR:
            raise ValueError(f"colour is between 0 and {MAX_COLOUR}")
        self._replica = replica
        self._max_open = max_open
        self._channels = channels
        # Snapshots recorded before a restart are never recorded again: the
        # restored state may hold updates from after that recording.
        self._colour = colour
        self._owed: set[str] = set()  # peers that have not answered our colour
        self._recordings: dict[int, _Recording] = {}  # by colour, oldest first
        self._open: dict[int, _Recording] = {}  # the ones with channels still open
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
    def colour(self) -> int:
        """How many snapshots this node has recorded (the latest one's
        number): what to keep, with the state, for a restart (``colour=``).

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", [], rng=Random(1)))
        >>> _ = node.initiate(); node.colour
        1

        Cost: O(1).
        """
        return self._colour

    def checkpoint(self) -> LocalState:
        """This replica's state now, with its colour: what to write down
        (``snapshot.files.write_checkpoint``) to restart from.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", [], rng=Random(1)))
        >>> _ = node.initiate()
        >>> node.checkpoint().colour
        1

        Cost: O(state size).
        """
        return LocalState.capture(self._replica, self._colour)

    @classmethod
    def restore(
        cls,
        local: LocalState,
        peers: Iterable[str],
        *,
        rng: Random,
        incarnation: int | None = None,
        max_open: int = 8,
        channels: bool = False,
        arriving: Iterable[Entry] = (),
        **options: int,
    ) -> SnapshotNode:
        """A node restarted from a checkpoint (or from its state in a cut),
        under a new incarnation, joined with the entries ``arriving`` (see
        ``snapshot.cut.restore_replica``).

        It keeps the checkpoint's colour: a snapshot recorded before the
        checkpoint was written is never recorded again here, as the restored
        state may hold updates from after that recording. Such a snapshot
        lost this node's part in the crash, and stays incomplete.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", ["b"], rng=Random(1)))
        >>> taken = node.initiate()
        >>> back = SnapshotNode.restore(node.checkpoint(), ["b"], rng=Random(2), incarnation=1)
        >>> back.replica.replica_id, back.initiate()
        ('a~1', SnapshotId(initiator='a~1', number=2))

        Cost: O(size of the checkpoint).
        """
        replica = restore_replica(
            local, peers, rng=rng, incarnation=incarnation, arriving=arriving, **options
        )
        return cls(replica, max_open=max_open, colour=local.colour, channels=channels)

    # -- snapshots -------------------------------------------------------------------

    def initiate(self) -> SnapshotId:
        """Start a snapshot here: record this replica's state now, as the
        next colour. Markers go to the peers on the next :meth:`tick`.
        SnapshotError once the colours are exhausted (:data:`MAX_COLOUR`).

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", [], rng=Random(1)))
        >>> node.initiate(), node.initiate()
        (SnapshotId(initiator='a', number=1), SnapshotId(initiator='a', number=2))

        Cost: O(state size).
        """
        if self._colour >= MAX_COLOUR:
            raise SnapshotError(f"no colour left after {MAX_COLOUR}")
        self._record(self._colour + 1, None)
        return SnapshotId(self._replica.replica_id, self._colour)

    def recording(self, snapshot: SnapshotId) -> LocalRecording | None:
        """This node's part of ``snapshot`` if it is complete, else None.
        A part is complete once recorded, or, with ``channels=True``, once
        every channel from a member it waits for is closed (peers removed
        since it recorded are not waited for).

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", [], rng=Random(1)))
        >>> node.recording(node.initiate()).state.node   # no peers: done at once
        'a'

        Cost: O(frames recorded + peers).
        """
        rec = self._recordings.get(snapshot.number)
        if rec is None:
            return None
        if rec.open:
            self._follow_membership()
            if rec.open:
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
        self._recordings.pop(snapshot.number, None)
        self._open.pop(snapshot.number, None)

    def _record(self, colour: int, sender: str | None) -> list[Outgoing]:
        # Every colour up to ``colour`` not recorded here yet, all at this
        # one moment: one copy of the state serves them all.
        have = self._colour
        if colour <= have:
            return []
        self._colour = colour
        state = LocalState.capture(self._replica, colour)
        peers = self._replica.peers if self._channels else []
        for n in range(max(have + 1, colour - self._max_open + 1), colour + 1):
            rec = self._recordings[n] = _Recording(state, set(peers))
            if rec.open:
                self._open[n] = rec
            self.stats.recorded += 1
        while len(self._recordings) > self._max_open:
            oldest = next(iter(self._recordings))
            del self._recordings[oldest]
            self._open.pop(oldest, None)
            self.stats.evicted += 1
        if not self._channels:
            # Gossip carries the colour to every node; an initiator's markers
            # (one to each peer, on the next tick) only hurry it along.
            self._owed = set(self._replica.peers) if sender is None else set()
            return []
        # The sender has this colour already; every other peer is owed it.
        self._owed = set(peers)
        if sender is not None:
            self._owed.discard(sender)
        return self._markers(self._owed)

    def _markers(self, peers: Iterable[str]) -> list[Outgoing]:
        frame = self._wrap(_MARKER, _EMPTY)
        out = [(peer, frame) for peer in sorted(peers)]
        self.stats.markers += len(out)
        return out

    def _follow_membership(self) -> None:
        # Peers removed from the replica since a recording are waited for no
        # more, and owed no marker. Only called while something is open.
        members = set(self._replica.peers)
        self._owed &= members
        for n, rec in list(self._open.items()):
            departed = rec.open - members
            if departed:
                rec.open -= departed
                self.stats.departed += len(departed)
                if not rec.open:
                    del self._open[n]

    # -- the Node surface ------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """The replica's gossip round, plus markers to peers that have not
        answered this node's colour.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", ["b"], rng=Random(1)))
        >>> _ = node.initiate()
        >>> len(node.tick(0.0))    # a round opening with b, and a marker
        2

        Cost: the replica's tick, plus O(peers) while a snapshot is under
        way here, nothing once every peer answered and every channel closed.
        """
        out = [(dest, self._wrap(_DATA, f)) for dest, f in self._replica.tick(now)]
        if self._owed or self._open:
            self._follow_membership()
            out += self._markers(self._owed)
            if not self._channels:
                self._owed.clear()  # once: gossip carries the colour from here
        return out

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        """Handle one frame from node ``sender``: record first if its colour
        is above this node's, then record or close the channel from
        ``sender``, then hand a data frame to the replica. A frame that does
        not parse is dropped and counted; nothing of it is applied.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", ["b"], rng=Random(1)))
        >>> node.receive(0.0, "b", b"junk"), node.stats.malformed
        ([], 1)

        Cost: O(len(frame) + snapshots under way), plus the replica's receive.
        """
        try:
            kind, colour, body = _parse(frame)
        except DecodeError:
            self.stats.malformed += 1
            return []
        out = self._record(colour, sender) if colour > self._colour else []
        if self._open:
            for n, rec in list(self._open.items()):
                if sender not in rec.open:
                    continue
                if colour >= n:  # the sender recorded first: the channel's marker
                    rec.open.discard(sender)
                    if not rec.open:
                        del self._open[n]
                elif kind == _DATA:
                    rec.frames.setdefault(sender, []).append(body)
        if colour >= self._colour:
            self._owed.discard(sender)  # it answered: it has our colour
        if kind == _DATA:
            replies = self._replica.receive(now, sender, body)
            out += [(dest, self._wrap(_DATA, f)) for dest, f in replies]
        elif kind == _MARKER:
            out.append((sender, self._wrap(_ACK, _EMPTY)))
            self.stats.answers += 1
        return out

    def wrap(self, frames: Iterable[Outgoing]) -> list[Outgoing]:
        """The replica's frames made outside :meth:`tick` and :meth:`receive`
        (``Replicator.replicate``, ``Replicator.ask``: a write or read at a
        consistency level), wrapped as theirs are, with this node's colour
        now, for the driver to send.

        >>> from random import Random
        >>> node = SnapshotNode(Replicator("a", ["b"], rng=Random(1)))
        >>> [dest for dest, _ in node.wrap(node.replica.replicate(["b"]))]
        ['b']

        Cost: O(size of the frames).
        """
        return [(dest, self._wrap(_DATA, frame)) for dest, frame in frames]

    def _wrap(self, kind: int, body: bytes) -> bytes:
        # The header, then the replicator frame as it is (data), or b"".
        head = _HEAD + codec.encode_plain([kind, self._colour])[1:]
        return head + (body if kind == _DATA else _EMPTY)


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
    :class:`SnapshotNode` and run rounds until the part of every member is
    complete: the initiator and its peers at the start that are its peers
    still (a node removed meanwhile, or one that was never a peer, is not
    waited for, and not in the cut). Raises SnapshotIncomplete after
    ``max_rounds`` (a member down or cut off). To take one mid-run instead,
    call :meth:`SnapshotNode.initiate` and poll :func:`gather` between rounds.

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
    at_start = set(first.replica.peers)

    def cut() -> GlobalSnapshot | None:
        # Read afresh each time: a restart replaces a node's object, and the
        # initiator's peers change as members are removed.
        now = network.nodes
        lead = now[initiator]
        assert isinstance(lead, SnapshotNode)
        members = [initiator, *sorted(at_start.intersection(lead.replica.peers))]
        nodes = [now.get(m) for m in members]
        if not all(isinstance(n, SnapshotNode) for n in nodes):
            return None  # a member that is not in this network holds it up
        return gather(nodes, snapshot)  # type: ignore[arg-type]

    rounds = network.run_until(lambda: cut() is not None, max_rounds)
    taken = cut()
    if rounds is None or taken is None:
        raise SnapshotIncomplete(f"snapshot {snapshot} incomplete after {max_rounds} rounds")
    return taken
