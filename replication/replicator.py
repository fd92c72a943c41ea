"""The gossip replicator: one replica's keyspace of CRDTs, kept in sync with
its peers by push-pull anti-entropy, sans-I/O.

A :class:`Replicator` owns a keyspace of named CRDTs (any type that follows
the ``crdts.base.CRDT`` protocol and is registered with ``crdts.codec``; no
type is special-cased). Applications update through it, so every mutation is
seen and its delta recorded. It takes the time and incoming frames and returns
the frames to send (see ``replication.transport``); it never sleeps, opens
sockets or reads clocks.

Causality. Every local update is an *operation* with a dot ``(replica id, n)``,
``n`` counting all of that replica's operations. Each key carries the
operations its state reflects as per-key dot ranges (``replication.dotranges``):
for each writer, its first ``hi`` operations *on this key* and the dot of the
last. Every state or delta travels with the ranges it carries, so a key's state
is always exactly the join of the deltas of its operations, "is this news?" is
a comparison per writer, and the snapshot layer gets exact per-key clocks.

Bounded state (DESIGN.md). What a replica keeps is bounded by what it holds,
not by its history:

- A key's bookkeeping is O(writers of the key): per writer ``(lo, lo_dot, hi,
  hi_dot)``, a stretch of its operations on the key and the dots of both ends
  (the lower one a *predecessor link*). Dot sets were O(operations): when
  updates to keys interleave, each key's dots are sparse and all sat in the
  dot cloud. Per-key counters alone would make dots collide across keys, and
  dotted version vectors still need a dot cloud for out-of-order arrivals;
  ranges with predecessor links keep dots global (unique, as the operation
  log, Mattern's cut test and the checker need) and never hold a gap: a
  replica merges an entry only if it *follows* what the key holds (each
  stretch starts at or below it); one that does not is a *gap*, left out, and
  its sender's log position is forgotten, so the sender answers next with a
  catch-up of whole keys (ranges from 0), which always follows.
- The replica-wide clock, carried by every round's opener, is a *prefix*
  version vector, O(writers): every operation of writer ``w`` up to
  ``clock[w]`` is held, whatever key it was on. It is exact for the replica's
  own dots and otherwise never above what is held (a peer may then send
  something redundant, never leave out something needed). It rises when the
  operations held of a writer are exactly its first ones (their number equals
  the highest dot held, counted incrementally: exact in steady state), and
  when a log interval of a peer, sent in one frame, is taken in with no gap
  (the receiver then holds all the peer held at its end, so the peer's prefix
  clock at that point too, capped at the highest dot held of each writer).
- The log keeps at most one record per key, ordered by sequence number: a new
  change to a key joins the key's record and moves it to the head, or replaces
  it when every peer with a log position (or a catch-up on its way) already
  holds it; a peer that turns out to be behind a replaced or dropped record
  gets a catch-up. If the two do not touch (a hole), the record becomes "the
  whole key", read live when pushed. A bounded log therefore only drops a
  change when there are more keys than ``log_limit`` (or when every peer
  holds it), never because other keys were busy. Records every positioned
  peer holds leave the log at once (raising the floor the same way), and a
  whole state taken in (a catch-up's entry) is logged as the key itself, so
  the log holds what some peer lacks, as deltas or an index, never second
  copies of states. Per-peer state is O(1).
- A key's ranges are kept as one flat tuple ``(writer, hi, hi_dot, ...)``
  while it has few writers and no markers (most keys): about a quarter of
  a ``DotRanges`` (docs/bounded-state.md, "Memory per key").

Gossip (Almeida, Shoker and Baquero 2018, with the fixes of Enes et al. 2019):

- Each replica records every change (a local delta, or a received one that
  brought something new) in a *log* with a sequence number, one record per
  key (see above).
- Every interval, it picks ``fanout`` random peers and opens a round with
  each by sending its clock alone. The peer answers with what the opener
  lacks and asks for its part, which the opener then filters by the peer's
  fresh clock (push-pull). To a peer that has acknowledged position ``p`` of
  its log, a replica pushes the joined deltas of ``(p, head]``, per key,
  leaving out what came from that peer (no back-propagation). To a new peer,
  one that restarted, or one whose position fell out of the bounded log, it
  pushes a *catch-up* instead: the state of every key whose operations the
  peer's clock does not cover, as the interval ``(-1, head]``, so only the
  keys that differ travel (the version-vector form of a digest sync, without
  the digests). Either way entries go in frames of at most ``max_frame``
  bytes (and ``chunk_size`` entries); an entry larger than a frame goes in
  pieces that the peer reassembles (a few entries per peer at a time, within
  ``max_state`` plus a frame of bytes, dropped after ``piece_timeout`` or
  when the sender restarts) and merges only whole.
  The peer merges only the entries that carry operations it lacks (no
  redundant state) and acknowledges its true position: a position moves only
  when every part of the interval arrived.
- Sizes: a key's state is bounded by ``max_state`` bytes of its encoding.
  :meth:`Replicator.check_size` tells a caller whether a state fits (updates
  are not encoded to check them: that would cost O(state) per update); a
  state over it is not sent, and one received is refused, counted in
  ``stats.oversize``.
- A frame that does not parse, claims another node's identity, or would change
  a key's type is dropped and counted; nothing of it is applied.

Restarting from an older copy of its state (its store: ``replication.store``),
a replica must take a new *incarnation* (:meth:`Replicator.from_entries`): a
fresh replica id derived from the node id, so its new dots never collide with
ones it issued before.

Pruning (docs/pruning.md; Akka Distributed Data's pruning). A replica id
that can never issue again is *retired*: an earlier incarnation of this node
(a node is the authority on its own incarnations), or any incarnation of a
member removed for good (:meth:`Replicator.retire`). Once it has been retired
for ``prune_after`` (a dissemination period) and every member reports, in
the tally its pushes carry, the same count and digest of that id's
operations as the owner holds, the owner (this node for its own
incarnations, the least member node id for a removed member's) folds them,
key by key, into one operation of its own (``crdts.base.Prunable.prune``)
and leaves a marker in the key's ranges. A replica that merges a marker
cleans the id out of its own state and ranges (``cleanup``), strips it from
whatever arrives later, and drops the id from its prefix clock and tallies
once it holds nothing of it; markers, and the dropping of late data, last
``marker_ttl``. So the bookkeeping, the prefix clock that opens every round
and the counters hold live ids only, whatever the number of restarts.

Cost: ``update`` is the type's mutator plus O(1) (amortised over peers'
acks); a push costs O(keys changed in the interval); a catch-up O(keys)
range tests; merging an entry costs the type's merge plus O(its writers).
Pruning costs one pass over the keys per round in which ids are pruned or
markers expire.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from hashlib import blake2b
from random import Random
from typing import Any, NamedTuple, TypeGuard, TypeVar

from sortedcontainers import SortedList

from crdts import codec
from crdts._slots import leq_slots
from crdts.base import CRDT, Prunable, check_replica, check_text
from crdts.dotcontext import CausalContext
from crdts.errors import DecodeError, InvalidOperation, StateTooLarge
from replication.dotranges import DotRanges
from replication.hlc import DEFAULT_MAX_OFFSET, HybridClock
from replication.messages import (
    DEFAULT_FRAME,
    HELD,
    MAX_FRAME,
    MAX_TALLY,
    MIN_FRAME,
    NOTHING,
    PUSHED,
    TOO_LARGE,
    Ack,
    Entry,
    EntryTooLarge,
    Message,
    Piece,
    Push,
    Read,
    ReadResult,
    Reply,
    check_claims,
    encode,
    encode_interval,
    encode_keyspace,
    entry_item,
    parse,
    parse_frame_entries,
    sent_by,
)
from replication.transport import Outgoing

__all__ = [
    "DEFAULT_MAX_STATE",
    "AckHook",
    "AnswerHook",
    "DurableMark",
    "PruneHook",
    "Replicator",
    "ReplicatorStats",
    "Staged",
]

C = TypeVar("C", bound=CRDT)
#: The largest state a key may hold unless configured otherwise: 64 MiB of
#: its canonical encoding.
DEFAULT_MAX_STATE = 64 * 1024 * 1024
_ANY = 1 << 64  # above every sequence number

#: Called as ``hook(key, removed, (hi, hi_dot), owner_dot)`` when this replica
#: folds ``removed``'s first ``hi`` operations on ``key`` (up to dot
#: ``hi_dot``) into its operation ``owner_dot``: what an operation log needs
#: to stay exact (``replication.history.History.pruned``).
PruneHook = Callable[[str, str, tuple[int, int], tuple[str, int]], None]


#: Called as ``hook(node, position)`` when peer ``node`` acknowledges that it
#: holds this replica's log up to ``position`` (see :meth:`Replicator.holders`).
AckHook = Callable[[str, int], None]
#: Called as ``hook(node, request, key, complete)`` once the answer of node
#: ``node`` to read ``request`` (:meth:`Replicator.ask`) is taken in:
#: ``complete`` False when its state was too large to travel in one frame.
AnswerHook = Callable[[str, int, str, bool], None]


def _prunable(state: CRDT) -> TypeGuard[Prunable]:
    # (An isinstance check against a runtime protocol walks its attributes
    # on every call; this is on the merge path of every marked key.)
    return callable(getattr(state, "cleanup", None)) and callable(getattr(state, "prune", None))


def _check_kind(key: str, held: CRDT | None, new: Callable[[], CRDT]) -> None:
    # An update made for one type never runs on a key of another (a
    # PN-Counter's increment would run on a G-Counter and be acknowledged):
    # when the caller names the type by its class, it must be the key's.
    if held is not None and isinstance(new, type) and type(held) is not new:
        raise InvalidOperation(
            f"{key!r:.60} holds a {type(held).__name__}, not a {new.__name__}"
        )


def _mark(key: str, hi_dot: int) -> int:
    """A writer's stretch on one key as 64 bits: a replica's digest of a
    writer is the XOR of these over its keys, so two replicas with equal
    digests (and counts) hold the same operations of that writer."""
    data = key.encode("utf-8", "surrogatepass") + hi_dot.to_bytes(8, "big")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


@dataclass(slots=True)
class _Change:
    """A key's record in the log: the join of its changes since the record
    began, or (``delta`` None) the whole key, read live when pushed."""

    seq: int
    key: str
    delta: CRDT | None
    dots: DotRanges | None  # None with ``delta``
    origin: str | None  # replica id all of it came from; None: mixed
    # (the operations it claimed, the entry as it travelled) when last
    # pushed: see Replicator._encode_entries
    sent: tuple[object, bytes] | None = None


@dataclass(slots=True)
class _Peer:
    """What this replica knows of one peer node."""

    replica: str | None = None  # the peer's replica id (incarnation) last heard
    acked: int | None = None  # our log position the peer holds; None: unknown
    context: CausalContext | None = None  # its prefix clock when it last pushed
    caught_up: int | None = None  # our head when we last sent it a catch-up
    # retired id -> (count, digest, when heard) of its operations the peer holds
    tally: dict[str, tuple[int, int, float]] = field(default_factory=dict)
    asked: tuple[str, ...] = ()  # retired ids its last opener asked us about
    # What our last push to it said: our position in its log, and which
    # state of our clock (see Replicator._quiet)
    told: int | None = None
    told_clock: int = -1


class DurableMark(NamedTuple):
    """What a replica held when its driver took the keys to write
    (:meth:`Replicator.durable_mark`): how many changes it had seen, and its
    position in each peer's log."""

    version: int
    positions: dict[str, int]


@dataclass(slots=True)
class ReplicatorStats:
    """Counters a driver or a test can read."""

    updates: int = 0
    merged: int = 0  # entries that brought operations this replica lacked
    redundant: int = 0  # entries received that carried nothing new
    malformed: int = 0  # frames that did not parse
    refused: int = 0  # frames that parsed but were refused (identity, type)
    catch_ups: int = 0  # pushes of whole keys to a peer with no usable log position
    stale: int = 0  # pushes computed for another incarnation of this node
    oversize: int = 0  # states over max_state: left out of what we send, or refused
    pieces: int = 0  # entries that arrived in pieces and were reassembled
    pieces_dropped: int = 0  # reassemblies given up: timed out, replaced, restarted
    gaps: int = 0  # entries left out: they need operations this replica lacks
    pruned: int = 0  # (key, retired id) pairs this replica folded into its own operation
    cleaned: int = 0  # (key, retired id) pairs cleaned out on seeing a marker
    late: int = 0  # stretches of pruned ids stripped from what arrived
    conflicts: int = 0  # of those, ones holding operations a marker did not fold
    reads: int = 0  # reads of a key asked of this replica and answered (Read)
    answers: int = 0  # answers to this replica's reads taken in (ReadResult)


@dataclass(slots=True)
class _Assembly:
    """The pieces of one entry received so far from one peer."""

    piece: Piece  # the first piece that arrived: says which entry this is
    since: float  # when it arrived
    chunks: dict[int, bytes]
    size: int = 0


#: Entries in pieces that one peer may have half-received at once.
_ASSEMBLIES = 8
#: Extra members a round opens with while retired ids wait for their tallies.
_ASK_EXTRA = 4


def _entry_of(piece: Piece) -> tuple[object, ...]:
    # The entry a piece belongs to: the same interval, part and number of
    # pieces from the same incarnation is the same entry (the interval's end
    # moves with every change the sender makes).
    return (piece.sender, piece.to, piece.start, piece.end, piece.part, piece.parts, piece.count)


def _since(held: _Assembly) -> float:
    return held.since


#: A key's whole bookkeeping (every stretch from lo 0, no markers) as one
#: flat tuple ``(writer, hi, hi_dot, ...)``: about 110 bytes for three
#: writers, where a DotRanges (its object, its dict, a 4-tuple per writer)
#: took about 470, the largest part of a G-Counter key. Keys with more
#: writers than _FLAT_WRITERS, or with markers, keep their DotRanges, so
#: that reading one writer's stretch stays O(1) where writers are many.
_Flat = tuple[object, ...]
_FLAT_WRITERS = 8


def _within_lagging(ops: DotRanges, lagging: list[tuple[str, int]]) -> bool:
    """``ops.within(vv)`` for ``ops`` held or logged here, given the writers
    of which ``vv`` lacks something held here (``lagging``, with their
    ``vv`` entries): every other writer of ``ops`` is covered whatever
    ``ops`` holds of it (see ``Replicator._settled``), so only these are
    compared. Cost: O(lagging writers), at most O(writers held)."""
    spans = ops.spans
    for writer, upto in lagging:
        span = spans.get(writer)
        if span is not None and span[3] > upto:
            return False
    return True


def _unflat(flat: _Flat) -> DotRanges:
    """The DotRanges a flat tuple stands for. Cost: O(writers)."""
    return DotRanges({
        flat[i]: (0, 0, flat[i + 1], flat[i + 2])  # type: ignore[misc]
        for i in range(0, len(flat), 3)
    })


def _flat_top(flat: _Flat, writer: str) -> tuple[int, int]:
    """``(hi, hi_dot)`` of ``writer`` in a flat tuple, (0, 0) if absent."""
    for i in range(0, len(flat), 3):
        if flat[i] == writer:
            return flat[i + 1], flat[i + 2]  # type: ignore[return-value]
    return 0, 0


class Replicator:
    """One replica: a keyspace of CRDTs and the gossip state toward its peers.

    >>> from random import Random
    >>> from crdts import GCounter
    >>> a = Replicator("a", ["b"], rng=Random(1))
    >>> b = Replicator("b", ["a"], rng=Random(2))
    >>> _ = a.update("hits", GCounter, lambda c, me: c.increment(me, 3))
    >>> frames = a.tick(0.0)                  # a opens a round with b
    >>> while frames:                         # a perfect network, by hand
    ...     dest, frame = frames.pop(0)
    ...     node = {"a": a, "b": b}[dest]
    ...     frames += node.receive(0.0, "b" if dest == "a" else "a", frame)
    >>> b.get("hits").value
    3
    """

    def __init__(
        self,
        node_id: str,
        peers: Iterable[str],
        *,
        rng: Random,
        fanout: int = 1,
        chunk_size: int = 500,
        log_limit: int = 10_000,
        incarnation: int = 0,
        max_frame: int = DEFAULT_FRAME,
        max_state: int = DEFAULT_MAX_STATE,
        piece_timeout: float = 30.0,
        prune_after: float = 300.0,
        marker_ttl: float = 21_600.0,
        max_offset: int = DEFAULT_MAX_OFFSET,
        durable_acks: bool = False,
    ) -> None:
        """A replica for node ``node_id`` gossiping with ``peers`` (node ids).

        ``rng`` makes every random choice (peer selection, incarnations), so
        a seeded one makes the replica deterministic. ``incarnation`` 0 gives
        the replica id ``node_id``; any other gives ``"node_id~incarnation"``.
        Every frame it sends is at most ``max_frame`` bytes (the TCP driver's
        ``Limits.max_frame`` must leave room for it and its overhead) and
        carries at most ``chunk_size`` entries; a key's state may be at most
        ``max_state`` bytes; a partly received entry is dropped after
        ``piece_timeout`` (in the time given to :meth:`receive`). A retired
        replica id is pruned no sooner than ``prune_after`` after it was
        retired, and markers of a pruning (and the dropping of late data of
        the id) last ``marker_ttl``: both in the time given to :meth:`tick`,
        and both must exceed how long a frame can be delayed (and
        ``marker_ttl`` how old a store a member may restart from). The
        defaults, 5 minutes and 6 hours in a node's seconds, are Akka's
        ``max-pruning-dissemination`` and ``pruning-marker-time-to-live``.
        The replica's hybrid logical clock (:attr:`hlc`) is fed the time
        given to :meth:`tick` and :meth:`receive`; an explicit LWW timestamp
        more than ``max_offset`` nanoseconds ahead of it is refused. With
        ``durable_acks``, it acknowledges a peer's log only as far as its
        driver's store has written (:meth:`written`).
        """
        check_replica(node_id)
        if fanout < 1 or chunk_size < 1 or log_limit < 1:
            raise ValueError("fanout, chunk_size and log_limit are at least 1")
        if not (prune_after >= 0 and marker_ttl >= 0):
            raise ValueError("prune_after and marker_ttl are at least 0")
        self._configure_sizes(max_frame, max_state, piece_timeout)
        self._node = node_id
        self._replica = node_id if incarnation == 0 else f"{node_id}~{incarnation}"
        self._peer_ids = sorted(set(peers) - {node_id})
        self._peer_set = set(self._peer_ids)
        self._rng = rng
        self._fanout = fanout
        self._chunk = chunk_size
        self._log_limit = log_limit
        self._states: dict[str, CRDT] = {}
        # Whole: every stretch from lo 0. Kept compact (see _put): read
        # through _ranges, write through _put.
        self._ops: dict[str, DotRanges | _Flat] = {}
        self._keys: SortedList[str] = SortedList()
        self._context = CausalContext()  # the prefix clock: a version vector only
        self._clock_changes = 0  # how often it changed (see _quiet)
        self._top: dict[str, int] = {}  # writer -> highest dot held, any key
        self._count: dict[str, int] = {}  # writer -> how many of its ops are held
        self._counter = 0  # dots issued by this replica id
        # One record per key, oldest first. (An OrderedDict: records leave
        # from the front, where a dict's iteration would step over the holes.)
        self._log: OrderedDict[str, _Change] = OrderedDict()
        self._floor = 0  # log positions below it are unusable: content dropped
        self._held_by_all: int | None = None  # cached: see _everyone_holds
        self._at_least = 0  # how many peers sit at that position
        self._head = 0
        self._peers: dict[str, _Peer] = {}  # made on first contact
        self._positions: dict[str, int] = {}  # replica id -> its log we hold up to
        self._parts: dict[str, tuple[int, int, set[int]]] = {}
        self._subscribers: list[Callable[[str, CRDT], None]] = []
        self._staged: Staged | None = None  # updates written down, not yet applied
        self.stats = ReplicatorStats()
        # Pruning (see the module docstring). Times are None until the next
        # tick stamps them (a restore does not know the time).
        self._now: float | None = None
        self._prune_after = prune_after
        self._marker_ttl = marker_ttl
        self._prune_hooks: list[PruneHook] = []
        self._digest: dict[str, int] = {}  # writer -> XOR of _mark over its stretches
        self._retired: dict[str, float | None] = {}  # ids this replica would prune
        self._retired_nodes: dict[str, float | None] = {}  # removed members
        self._asking: dict[str, float] = {}  # retired id -> since when peers are asked
        self._gone: dict[str, float | None] = {}  # pruned ids: markers kept until ttl
        self._spread: set[str] = set()  # members to open with after a pruning
        self._hlc = HybridClock(max_offset=max_offset)
        # Consistency levels (docs/consistency.md): who waits for acks and
        # answers, and the number of this incarnation's last read.
        self._ack_hooks: list[AckHook] = []
        self._answer_hooks: list[AnswerHook] = []
        self._asked = 0
        # Durable acknowledgements (see written): positions acknowledged as
        # written, by replica id, and how many changes the store has seen.
        self._written: dict[str, int] | None = {} if durable_acks else None
        self._version = 0  # changes to keys so far (each _notify)
        self._written_version = 0

    # -- identity and reads ------------------------------------------------------

    @property
    def node_id(self) -> str:
        """The node's network address: the same across restarts.

        >>> Replicator("a", [], rng=Random(1)).node_id
        'a'

        Cost: O(1).
        """
        return self._node

    @property
    def hlc(self) -> HybridClock:
        """This replica's hybrid logical clock (``replication.hlc``): what
        default LWW timestamps are read from, fed by the time given to
        :meth:`tick` and :meth:`receive`. Operations dispatched through a
        type's table (``crdts.operations``) are handed it.

        >>> r = Replicator("a", [], rng=Random(1)); _ = r.tick(2.0)
        >>> r.hlc.timestamp(None)
        2000000000

        Cost: O(1).
        """
        return self._hlc

    @property
    def replica_id(self) -> str:
        """The id this incarnation writes its dots under.

        >>> Replicator("a", [], rng=Random(1), incarnation=3).replica_id
        'a~3'

        Cost: O(1).
        """
        return self._replica

    @property
    def peers(self) -> list[str]:
        """The node ids this replica gossips with, sorted: those it was given
        and those added since (:meth:`add_peer`), never a node merely because
        it sent a frame (a visitor is answered, not adopted).

        >>> Replicator("a", ["c", "b", "a"], rng=Random(1)).peers
        ['b', 'c']

        Cost: O(p).
        """
        return list(self._peer_ids)

    def add_peer(self, node: str) -> bool:
        """Gossip with node ``node`` from now on; False if it already was a
        peer (or is this node). A node retired before (:meth:`retire`) that
        joins again is live again: its new incarnation's ids are not
        retired, and its old ones, not yet being pruned here, are left to it
        (a node prunes its own earlier incarnations).

        >>> r = Replicator("a", ["b"], rng=Random(1))
        >>> r.add_peer("c"), r.add_peer("c"), r.peers
        (True, False, ['b', 'c'])

        Cost: O(p) plus O(retired ids).
        """
        check_replica(node)
        if node == self._node or node in self._peer_set:
            return False
        if node in self._retired_nodes:
            del self._retired_nodes[node]
            for writer in [w for w in self._retired if self._of_node(w, node)]:
                if writer not in self._asking:
                    del self._retired[writer]
        self._peer_set.add(node)
        self._peer_ids.append(node)
        self._peer_ids.sort()
        self._held_by_all = None
        return True

    def remove_peer(self, node: str) -> bool:
        """Stop gossiping with node ``node`` and forget what was known of it;
        False if it was not a peer. Frames it still sends are answered as a
        visitor's.

        >>> r = Replicator("a", ["b", "c"], rng=Random(1))
        >>> r.remove_peer("b"), r.remove_peer("b"), r.peers
        (True, False, ['c'])

        Cost: O(p).
        """
        if node not in self._peer_set:
            return False
        self._peer_set.discard(node)
        self._peer_ids.remove(node)
        self._peers.pop(node, None)
        self._spread.discard(node)
        self._held_by_all = None
        return True

    def retire(self, node: str) -> list[str]:
        """Member ``node`` was removed from the cluster for good: none of its
        incarnations will issue again, so their entries may be pruned (by
        the least node id among this node and its peers, once every member
        holds all their operations). Call it on every member (after
        :meth:`remove_peer`); ids of ``node`` that arrive later are retired
        too. Returns the ids of ``node`` held now, sorted.

        >>> from crdts import GCounter
        >>> r = Replicator("a", ["b"], rng=Random(1))
        >>> _ = r.update("k", GCounter, lambda c, me: c.increment(me))
        >>> r.retire("b"), r.retire("a")
        Traceback (most recent call last):
        ...
        ValueError: node 'a' cannot retire itself

        Cost: O(writers held).
        """
        check_replica(node)
        if node == self._node:
            raise ValueError(f"node {node!r} cannot retire itself")
        self._retired_nodes[node] = self._now
        found = sorted(w for w in self._count if self._of_node(w, node))
        for writer in found:
            self._retired.setdefault(writer, self._now)
        return found

    @property
    def retired(self) -> list[str]:
        """The retired replica ids this replica still holds operations of,
        sorted: its own earlier incarnations, which it prunes, and a removed
        member's (pruned by the least member node id).

        >>> from crdts import GCounter
        >>> from replication.messages import Entry
        >>> a = Replicator("a", [], rng=Random(1))
        >>> _ = a.update("k", GCounter, lambda c, me: c.increment(me))
        >>> b = Replicator.from_entries("a", [Entry("k", a.get("k"), a.ops("k"))], [],
        ...                             rng=Random(2), incarnation=5)
        >>> b.retired
        ['a']

        Cost: O(r log r).
        """
        return sorted(self._retired)

    @staticmethod
    def _of_node(writer: str, node: str) -> bool:
        return writer == node or writer.startswith(node + "~")

    def handed_off(self, to: Iterable[str] | None = None) -> bool:
        """Whether some peer (one of the nodes ``to``, if given) has
        acknowledged this replica's whole log as it is now, so every
        operation it holds lives on elsewhere: what a member that leaves
        waits for (``replication.membership``: ``to`` are the members that
        stay, as two leavers must not hand off to each other). True too when
        it has nothing to hand over, or no such peer to hand it to.

        >>> Replicator("a", ["b"], rng=Random(1)).handed_off()
        True

        Cost: O(p).
        """
        peers = self._peer_ids if to is None else [p for p in to if p in self._peer_set]
        if self._head == 0 or not peers:
            return True
        return any(
            (state := self._peers.get(node)) is not None
            and state.acked is not None
            and state.acked >= self._head
            for node in peers
        )

    def get(self, key: str) -> CRDT | None:
        """A copy of the state under ``key``, or None.

        >>> from crdts import ORSet
        >>> r = Replicator("a", [], rng=Random(1))
        >>> _ = r.update("s", ORSet, lambda s, me: s.add("x", me))
        >>> sorted(r.get("s")), r.get("nothing")
        (['x'], None)

        Cost: the type's ``copy``.
        """
        state = self._states.get(key)
        return None if state is None else state.copy()

    def keys(self) -> list[str]:
        """The keys, sorted.

        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> for key in ("b", "a"):
        ...     _ = r.update(key, GCounter, lambda c, me: c.increment(me))
        >>> r.keys()
        ['a', 'b']

        Cost: O(k).
        """
        return list(self._keys)

    @property
    def context(self) -> CausalContext:
        """A copy of the replica's prefix clock: for each writer, every one of
        its operations up to that counter is held (a version vector, no
        cloud). Exact for this replica's own dots; for others it may lag what
        is held (see the module docstring), never exceed it.

        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> _ = r.update("k", GCounter, lambda c, me: c.increment(me))
        >>> r.context
        CausalContext(vv={'a': 1}, cloud={})

        Cost: O(r).
        """
        return self._context.copy()

    @property
    def refusals(self) -> int:
        """Frames refused so far as malformed or not acceptable from their
        sender (``stats.malformed + stats.refused``): a driver that sees this
        grow after a frame can disconnect the peer that sent it.

        >>> r = Replicator("a", ["b"], rng=Random(1))
        >>> _ = r.receive(0.0, "b", b"junk"); r.refusals
        1

        Cost: O(1).
        """
        return self.stats.malformed + self.stats.refused

    def entry(self, key: str) -> Entry | None:
        """The state under ``key`` with the dots of the operations it
        reflects, or None: the live objects, to read (encode, write down)
        before the replica changes again, never to change.

        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> _ = r.update("k", GCounter, lambda c, me: c.increment(me, 2))
        >>> r.entry("k").state.value, r.entry("other")
        (2, None)

        Cost: O(writers of the key): the ranges are built from their
        compact form (a fresh object; the state is the live one).
        """
        state = self._states.get(key)
        return None if state is None else Entry(key, state, self._ranges(key))

    def type_of(self, key: str) -> type[CRDT] | None:
        """The type of the state under ``key``, or None if it holds none:
        what checking an update's type needs, without building the key's
        ranges (:meth:`entry`) or copying its state (:meth:`get`).

        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> _ = r.update("k", GCounter, lambda c, me: c.increment(me, 2))
        >>> r.type_of("k").__name__, r.type_of("other")
        ('GCounter', None)

        Cost: O(1).
        """
        state = self._states.get(key)
        return None if state is None else type(state)

    def ops(self, key: str) -> DotRanges:
        """A copy of the operations reflected under ``key``, as per-key dot
        ranges (whole: each writer's first operations on the key).

        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> _ = r.update("k", GCounter, lambda c, me: c.increment(me))
        >>> r.ops("k").contains("a", 1), r.ops("other").count("a")
        (True, 0)

        Cost: O(writers of the key).
        """
        held = self._ops.get(key)
        if held is None:
            return DotRanges()
        return _unflat(held) if type(held) is tuple else held.copy()  # type: ignore[union-attr]

    def _ranges(self, key: str) -> DotRanges:
        """The bookkeeping of ``key`` (held) as DotRanges: the stored object
        itself (changes to it are kept) or one made from the flat form (call
        :meth:`_put` to keep changes). Cost: O(writers) when flat, else O(1)."""
        held = self._ops[key]
        return _unflat(held) if type(held) is tuple else held  # type: ignore[return-value]

    def _put(self, key: str, ranges: DotRanges) -> None:
        """Store ``ranges`` as the bookkeeping of ``key``, flat if it can be
        (few writers, no markers, all whole). Cost: O(writers)."""
        spans = ranges.spans
        if ranges.pruned or len(spans) > _FLAT_WRITERS:
            self._ops[key] = ranges
            return
        flat: list[object] = []
        for writer, (lo, _, hi, hi_dot) in spans.items():
            if lo:
                self._ops[key] = ranges  # (never for a key's own: kept as it is)
                return
            flat += (writer, hi, hi_dot)
        self._ops[key] = tuple(flat)

    def _successor(self, key: str, counter: int) -> DotRanges:
        """The stretch of this replica's next operation on ``key``, dot
        ``counter`` (as ``DotRanges.successor``). Cost: O(writers) when flat."""
        held = self._ops.get(key)
        if held is None:
            return DotRanges().successor(self._replica, counter)
        if type(held) is tuple:
            hi, hi_dot = _flat_top(held, self._replica)
            if counter <= hi_dot:
                raise ValueError(f"dot {counter} of {self._replica!r} is not after {hi_dot}")
            return DotRanges({self._replica: (hi, hi_dot, hi + 1, counter)})
        return held.successor(self._replica, counter)  # type: ignore[union-attr]

    def encode_keyspace(self) -> bytes:
        """The whole keyspace as canonical CBOR: equal keyspaces, equal bytes.

        >>> Replicator("a", [], rng=Random(1)).encode_keyspace().hex()
        '80'

        Cost: O(total state size).
        """
        return encode_keyspace((k, self._states[k]) for k in self._keys)

    def subscribe(self, callback: Callable[[str, CRDT], None]) -> Callable[[], None]:
        """Call ``callback(key, state)`` after every change to a key, local or
        merged (the state is the live one: read it, do not mutate it).
        Returns a function that unsubscribes.

        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> stop = r.subscribe(lambda key, state: print(key, state.value))
        >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me, 2))
        hits 2
        >>> stop(); _ = r.update("hits", GCounter, lambda c, me: c.increment(me))

        Cost: O(1); each change then costs one call per subscriber.
        """
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    # -- updates -------------------------------------------------------------------

    def update(self, key: str, new: Callable[[], C], mutate: Callable[[C, str], C]) -> C:
        """Apply ``mutate(state, replica_id)`` to the state under ``key``
        (created empty with ``new()`` if absent) and record the delta it returns.

        If ``mutate`` raises, nothing changes and the error propagates. If
        ``new`` is a class and the key holds another type, InvalidOperation
        is raised before ``mutate`` runs.

        >>> from crdts import PNCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> r.update("stock", PNCounter, lambda c, me: c.decrement(me, 2)).value
        -2

        Cost: the mutator's, plus O(1) (the log keeps a copy of the delta).
        """
        if type(key) is not str:
            raise TypeError("keys are str")
        check_text(key, "a key")
        if self._staged is not None:
            raise RuntimeError("updates are staged: apply or discard them first")
        held = self._states.get(key)
        _check_kind(key, held, new)
        state: C = new() if held is None else held  # type: ignore[assignment]
        delta = mutate(state, self._replica)
        if type(delta) is not type(state):
            raise TypeError(f"the mutator returned {type(delta).__name__}, not a delta")
        if held is None:
            self._states[key] = state
            self._keys.add(key)
        ops = self._issue(key)
        self._hold(key, ops)
        # The log keeps its own copy: the caller may go on using the delta.
        self._record(key, delta.copy(), ops, self._replica)
        self.stats.updates += 1
        self._notify(key)
        return delta

    def _issue(self, key: str) -> DotRanges:
        """A new local operation's identity on ``key``: the next dot of this
        replica, as the stretch that follows the key's bookkeeping (what its
        delta carries; the key's bookkeeping after the operation is
        ``ops(key)`` merged with it). Only the dot counter changes (a dot is
        never issued twice, even if the operation is then abandoned);
        :meth:`_hold` then records it, :meth:`_record` logs it. Cost: O(1)."""
        self._counter += 1
        return self._successor(key, self._counter)

    def _hold(self, key: str, ops: DotRanges) -> None:
        """Record ``ops`` (which follow the key's bookkeeping: no hole) as
        held under ``key``, with the per-writer counts and tops that let the
        prefix clock rise. Cost: O(writers of ``ops``)."""
        held = DotRanges() if key not in self._ops else self._ranges(key)
        mine = self._replica
        digest = self._digest
        for writer, (_, _, hi, hi_dot) in ops.items():
            before = held.held(writer)
            if hi <= before:
                continue
            if writer not in self._count:
                self._meet_writer(writer)
            # (A stretch is known by its last dot: the key's ops are a prefix.)
            mark = _mark(key, hi_dot) ^ (_mark(key, held.top(writer)) if before else 0)
            digest[writer] = digest.get(writer, 0) ^ mark
            count = self._count[writer] = self._count.get(writer, 0) + hi - before
            top = self._top.get(writer, 0)
            if hi_dot > top:
                top = self._top[writer] = hi_dot
            if count == top or writer == mine:
                # Its first `top` operations, all of them: a prefix held. (Our
                # own are all here: a dot issued and never installed, by a
                # failed staged update, names no operation anyone holds.)
                self._context.vv[writer] = top
                self._clock_changes += 1
        held.merge(ops)
        self._put(key, held)
        for writer in ops.pruned:
            if writer not in self._count and writer not in self._gone:
                self._gone[writer] = self._now  # markers only: they expire

    def _meet_writer(self, writer: str) -> None:
        # A writer held here for the first time: one that can never issue
        # again is retired (a node is the authority on its own incarnations).
        if writer == self._replica:
            return
        node = self._node
        if self._of_node(writer, node) or (self._retired_nodes and (
            writer in self._retired_nodes or writer.rpartition("~")[0] in self._retired_nodes
        )):
            self._retired.setdefault(writer, self._now)

    def _unhold(self, key: str, writer: str, span: tuple[int, int, int, int]) -> None:
        """Forget the tallies of ``writer``'s stretch on ``key``, stripped
        from its ranges by a pruning; the writer leaves the prefix clock and
        the tallies once nothing of it is held. Cost: O(1)."""
        _, _, hi, hi_dot = span
        self._digest[writer] ^= _mark(key, hi_dot)
        left = self._count[writer] - hi
        if left > 0:
            self._count[writer] = left
            return
        del self._count[writer], self._digest[writer]
        self._top.pop(writer, None)
        self._context.vv.pop(writer, None)
        self._clock_changes += 1
        self._retired.pop(writer, None)
        self._asking.pop(writer, None)
        self._gone[writer] = self._now

    def _record(self, key: str, delta: CRDT, ops: DotRanges, origin: str) -> None:
        """Log a change to ``key`` (``delta`` and ``ops`` now belong to the log)."""
        self._head += 1
        old = self._log.pop(key, None)
        if old is None:
            change = _Change(self._head, key, delta, ops, origin)
        elif self._everyone_holds(old.seq):
            # Its old part leaves the log: as for a record dropped for the
            # limit, a peer that turns out to hold less gets a catch-up (a
            # later change can follow what it holds without bringing the
            # old part, so a gap would not always show).
            change = _Change(self._head, key, delta, ops, origin)
            self._floor = max(self._floor, old.seq)
        else:
            change = old
            change.seq = self._head
            if change.origin != origin:
                change.origin = None
            if change.delta is None or change.dots is None:
                pass  # the whole key already
            elif change.dots.issubset(ops):
                # Exactness: a delta is the join of the operations it claims,
                # so one claiming more is the join of both (a whole state, say).
                change.delta, change.dots = delta, ops
            elif ops.issubset(change.dots):
                pass
            elif change.dots.joinable(ops):
                change.delta.merge(delta)
                change.dots.merge(ops)
            else:
                # A hole between them: never claim it; push the whole key.
                change.delta = change.dots = None
        self._log[key] = change
        if len(self._log) > self._log_limit:
            dropped = self._log.pop(next(iter(self._log)))
            self._floor = max(self._floor, dropped.seq)
        self._compact()

    def _compact(self) -> None:
        """Drop the oldest records while every peer with a log position (or
        a catch-up on its way) holds them: no push to a positioned peer
        would carry them, and the floor they raise sends any peer that turns
        out to hold less a catch-up (as for a replaced record). So the log
        holds what some peer still lacks, not every key that ever changed.
        Cost: O(1) amortised (each record is dropped once)."""
        log = self._log
        if not log:
            return
        least = self._least_held()
        last = next(reversed(log))
        if log[last].seq <= least:
            # All of it: clear() also frees the table, which deleting
            # record by record would keep at its largest size.
            self._floor = max(self._floor, log[last].seq)
            log.clear()
            return
        while (first := log[next(iter(log))]).seq <= least:  # O(1): an OrderedDict's first
            del log[first.key]
            self._floor = max(self._floor, first.seq)

    def _everyone_holds(self, seq: int) -> bool:
        # Whether every peer with a log position (or a catch-up on its way)
        # holds our log up to ``seq``, so a record that old can be replaced.
        # A heuristic only: one that acks less later gets a catch-up (see
        # _floor), which costs more than a delta but loses nothing.
        return self._least_held() >= seq

    def _least_held(self) -> int:
        # The least log position of a peer (see _everyone_holds), cached.
        least = self._held_by_all
        if least is None:
            # Peers only: a visitor's position would hold records back for good.
            positions = [
                p.acked if p.acked is not None else p.caught_up
                for node, p in self._peers.items()
                if node in self._peer_set
            ]
            # With no peer positioned, every peer gets a catch-up: replace freely.
            least = min((p for p in positions if p is not None), default=_ANY)
            self._held_by_all = least
            self._at_least = positions.count(least)
        return least

    def _moved(self, node: str, before: int | None) -> None:
        """Keep the least position of :meth:`_everyone_holds` as peer
        ``node``'s moves from ``before`` (None: none), without a pass over
        every peer: positions move with every push and ack, and a pass per
        change recorded was O(peers met) each (issue 13). The pass is due
        again only when the last peer at the least position leaves it.
        Cost: O(1)."""
        least = self._held_by_all
        if least is None or node not in self._peer_set:
            return
        peer = self._peers[node]
        after = peer.acked if peer.acked is not None else peer.caught_up
        if after == before:
            return
        if after is not None and after < least:
            self._held_by_all, self._at_least = after, 1
            return
        if after == least:
            self._at_least += 1
        if before == least:
            self._at_least -= 1
            if self._at_least <= 0:
                self._held_by_all = None

    def subscribe_pruning(self, hook: PruneHook) -> Callable[[], None]:
        """Call ``hook(key, removed, (hi, hi_dot), owner_dot)`` whenever this
        replica folds ``removed``'s first ``hi`` operations on ``key`` into
        its own operation ``owner_dot`` (see :data:`PruneHook`; an operation
        log follows prunings this way: ``replication.history.History.pruned``).
        Returns a function that unsubscribes.

        >>> from crdts import GCounter
        >>> from replication.messages import Entry
        >>> a = Replicator("a", [], rng=Random(1))
        >>> _ = a.update("k", GCounter, lambda c, me: c.increment(me, 2))
        >>> b = Replicator.from_entries("a", [Entry("k", a.get("k"), a.ops("k"))], [],
        ...                             rng=Random(2), incarnation=5, prune_after=0)
        >>> stop = b.subscribe_pruning(print)
        >>> _ = b.tick(0.0); _ = b.tick(1.0); b.get("k")
        k a (1, 1) ('a~5', 1)
        GCounter({'a~5': 2})

        Cost: O(1); each pruning then costs one call per hook.
        """
        self._prune_hooks.append(hook)
        return lambda: self._prune_hooks.remove(hook)

    def _notify(self, key: str) -> None:
        self._version += 1
        for callback in list(self._subscribers):
            callback(key, self._states[key])

    def stage(self, *, copies: bool = False) -> Staged:
        """Start a batch of updates made on copies of their keys: nothing of
        the replica changes until :meth:`apply` (a node writes the batch to
        its store first, and applies it only once that committed), and
        :meth:`discard` drops it as if it never was. One batch at a time;
        :meth:`update` waits for it to end. Gossip goes on meanwhile, but a
        frame that would give a staged key another type is refused.

        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> batch = r.stage()
        >>> _ = batch.update("hits", GCounter, lambda c, me: c.increment(me, 2))
        >>> r.get("hits"), batch.entry("hits").state.value
        (None, 2)
        >>> r.apply(batch); r.get("hits").value
        2

        With ``copies``, the batch keeps a copy of each update's delta: a
        type whose delta shares objects with its state (a user's type may)
        would otherwise let a later update of the key, even one taken back
        with :meth:`Staged.undo`, reach an earlier update's delta.

        Cost: O(1); see :class:`Staged` (``copies``: a copy of each delta).
        """
        if self._staged is not None:
            raise RuntimeError("a batch is staged already")
        self._staged = Staged(self, copies=copies)
        return self._staged

    def apply(self, batch: Staged) -> None:
        """Apply a staged batch, update by update, exactly as :meth:`update`
        would have (merged into the keys as they are now, which may have
        taken in gossip since), and end it.

        >>> from crdts import ORSet
        >>> r = Replicator("a", [], rng=Random(1))
        >>> batch = r.stage()
        >>> _ = batch.update("s", ORSet, lambda s, me: s.add("x", me))
        >>> r.apply(batch); sorted(r.get("s")), r.replica_id in r.context.vv
        (['x'], True)

        A key's updates in the batch are applied together, as one stretch
        of this replica's operations on it with the join of their deltas:
        the key is held, logged and its subscribers told once, not once per
        update (exactly what update by update leaves, since the stretches
        of one writer on a key join end to end and so do their deltas'
        records in the log; a pipelining node applies hundreds of updates
        of a few keys per commit).

        Cost: each delta's merge plus O(writers of the key) per key.
        """
        self._end(batch)
        changes = batch._changes
        if not changes:
            return
        by_key: dict[str, list[tuple[CRDT, int]]] = {}
        for key, delta, (_, counter) in changes:
            found = by_key.get(key)
            if found is None:
                by_key[key] = [(delta, counter)]
            else:
                found.append((delta, counter))
        self._counter = changes[-1][2][1]
        mine = self._replica
        states = self._states
        for key, updates in by_key.items():
            # The batch's deltas are its callers' too (to read): the log
            # takes a copy, one per key rather than one per update.
            joined, first = updates[0][0].copy(), updates[0][1]
            for delta, _ in updates[1:]:
                joined.merge(delta)
            state = states.get(key)
            if state is None:
                states[key] = joined.copy()
                self._keys.add(key)
            else:
                state.merge(joined)
            lo, lo_dot, hi, _ = self._successor(key, first).spans[mine]
            ops = DotRanges({mine: (lo, lo_dot, hi + len(updates) - 1, updates[-1][1])})
            self._hold(key, ops)
            self._record(key, joined, ops, mine)
            self._notify(key)
        self.stats.updates += len(changes)

    def discard(self, batch: Staged) -> None:
        """End a staged batch without applying any of it. Its dots are not
        issued again (a commit that reported failure may still reach the
        disk), and the replica's own prefix clock does not wait for them.

        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> batch = r.stage()
        >>> _ = batch.update("hits", GCounter, lambda c, me: c.increment(me))
        >>> r.discard(batch); r.get("hits")
        >>> _ = r.update("hits", GCounter, lambda c, me: c.increment(me))
        >>> r.ops("hits").top("a")
        2

        Cost: O(1)."""
        self._end(batch)
        self._counter += len(batch._changes)

    def _end(self, batch: Staged) -> None:
        if batch is not self._staged:
            raise RuntimeError("not the batch staged on this replica")
        self._staged = None

    # -- gossip out -----------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """One gossip round: open a push-pull exchange with ``fanout`` random
        peers (the pushes follow as replies).

        >>> r = Replicator("a", ["b"], rng=Random(1))
        >>> [dest for dest, frame in r.tick(0.0)]
        ['b']

        Cost: O(size of the clock) per peer, plus a pass over the keys in a
        round that prunes ids or drops markers.
        """
        self._expire_pieces(now)
        self._now = now
        self._hlc.advance(now)
        if self._retired or self._gone or self._retired_nodes:
            self._prune(now)
        if not self._peer_ids:
            return []
        chosen = self._rng.sample(self._peer_ids, min(self._fanout, len(self._peer_ids)))
        if self._asking or self._spread:
            # While ids wait to be pruned, also open with a few members whose
            # tally is missing, and after a pruning with those not yet told:
            # meeting each by chance takes O(members log members) rounds, and
            # a cluster only converges again once every member has the prune.
            missing = [
                p
                for p in self._peer_ids
                if p not in chosen and (p in self._spread or not self._tallied(p))
            ]
            chosen += self._rng.sample(missing, min(_ASK_EXTRA, len(missing)))
            self._spread.difference_update(chosen)
        return [out for peer in chosen for out in self._gossip(peer, reply=Reply.PUSH_AND_ASK)]

    # -- pruning ------------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        for table in (self._retired, self._gone, self._retired_nodes):
            for name, since in table.items():
                if since is None:
                    table[name] = now
        expired = [w for w, since in self._gone.items() if now - since >= self._marker_ttl]  # type: ignore[operator]
        for node, since in list(self._retired_nodes.items()):
            if now - since >= self._marker_ttl and not any(  # type: ignore[operator]
                self._of_node(w, node) for w in self._retired
            ):
                del self._retired_nodes[node]
        ready = [w for w in self._asking if self._everyone_tallies(w)]
        if self._staged is not None:
            ready = []  # a batch has taken dots ahead: issue none until it ends
        if ready or expired:
            self._prune_keys(set(ready), set(expired))
        for writer in expired:
            del self._gone[writer]
        owner = not self._peer_ids or self._node < self._peer_ids[0]
        for writer, since in self._retired.items():
            if (
                writer not in self._asking
                and now - since >= self._prune_after  # type: ignore[operator]
                and (owner or self._of_node(writer, self._node))
                and len(self._asking) < MAX_TALLY
            ):
                # Only tallies heard from now on count: an earlier one may
                # predate operations that were still on their way.
                self._asking[writer] = now

    def _tallied(self, node: str) -> bool:
        # Whether the member's tally of every id asked about is fresh and equal.
        peer = self._peers.get(node)
        if peer is None:
            return False
        for writer, since in self._asking.items():
            heard = peer.tally.get(writer)
            mine = (self._count.get(writer, 0), self._digest.get(writer, 0))
            if heard is None or heard[2] < since or heard[:2] != mine:
                return False
        return True

    def _everyone_tallies(self, writer: str) -> bool:
        # Every member holds exactly the operations of ``writer`` we hold:
        # its tally (from its current incarnation, heard since we asked)
        # has our count and digest.
        since = self._asking[writer]
        mine = (self._count.get(writer, 0), self._digest.get(writer, 0))
        for node in self._peer_ids:
            peer = self._peers.get(node)
            heard = None if peer is None else peer.tally.get(writer)
            if heard is None or heard[2] < since or heard[:2] != mine:
                return False
        return True

    def _prune_keys(self, ready: set[str], expired: set[str]) -> None:
        # One pass over the keys: fold each ready id into an operation of
        # ours on every key it wrote (leaving a marker), and drop the markers
        # of ids pruned longer than marker_ttl ago.
        me = self._replica
        for key in self._keys:
            held = self._ops[key]
            if type(held) is tuple and (not ready or ready.isdisjoint(held[0::3])):
                continue  # no markers to drop, no ready writer
            ops = self._ranges(key)
            changed = False
            dropped = expired & ops.pruned.keys()
            for writer in dropped:
                del ops.pruned[writer]
            for writer in sorted(ready & ops.spans.keys()):
                state = self._states[key]
                base = state.prune(writer, me) if _prunable(state) else 0
                span = ops.strip(writer)
                assert span is not None
                ops.mark(writer, span[2], span[3], me, base)
                self._put(key, ops)  # (with a marker: kept as this object)
                self._unhold(key, writer, span)
                mine = self._issue(key)
                self._hold(key, mine)
                self.stats.pruned += 1
                changed = True
                for hook in list(self._prune_hooks):
                    hook(key, writer, (span[2], span[3]), (me, self._counter))
            if dropped:
                self._put(key, ops)  # flat again once its markers are gone
            if changed:
                self._record_whole(key, me)
            if changed or dropped:
                self._notify(key)  # (its row changes: a store writes it again)
        if ready:
            self._spread.update(self._peer_ids)
        for writer in ready:
            # Held nowhere now (or never was, if its last stretches were
            # cleaned by another owner's markers): done.
            self._retired.pop(writer, None)
            self._asking.pop(writer, None)

    def _record_whole(self, key: str, origin: str | None) -> None:
        """Log a change to ``key`` as the whole key, read live when pushed
        (an index into the keyspace, no copy), which holds whatever the old
        record held: a change no delta expresses (a pruning), or a whole
        state taken in (a catch-up's entry). ``origin``: the replica id all
        of the key came from, None if mixed. Cost: O(1)."""
        self._head += 1
        old = self._log.pop(key, None)
        if old is not None and old.origin != origin:
            origin = None
        self._log[key] = _Change(self._head, key, None, None, origin)
        self._compact()

    def _gossip(self, peer: str, *, reply: Reply) -> list[Outgoing]:
        state = self._peers.setdefault(peer, _Peer())
        if reply is Reply.PUSH_AND_ASK:
            # Open with our clock alone: the peer answers with only what we
            # lack and asks for ours, which we then filter by its fresh clock.
            # Before we have heard from it we can only address it by node id.
            # The empty interval (at, at] says how far our log holds nothing
            # beyond that clock: all of it while we hold a prefix of every
            # writer (the clock is then all we hold), else no position. A peer
            # whose clock covers ours takes that as its position in our log
            # (_on_push), so a pair that has nothing to send each other
            # settles in one two-frame exchange, not four frames and two
            # catch-ups.
            at = self._head if self._context.vv == self._top else -1
            to = peer if state.replica is None else state.replica
            held = state.told = self._acknowledged(to)
            state.told_clock = self._clock_changes
            tally = self._tally(self._asking)
            request = Push(
                self._replica, to, at, at, 0, 1, reply, self._context, (), held, tally
            )
            return [(peer, encode(request))]
        return self._push(peer, state, reply)

    def _push(self, peer: str, state: _Peer, reply: Reply) -> list[Outgoing]:
        # Only ever a reply: the peer's replica id and clock are fresh.
        to, known = state.replica, state.context
        assert to is not None and known is not None
        if state.acked is None or state.acked < self._floor:
            if leq_slots(self._top, known.vv):
                # Its prefix clock covers every writer's top held here, so
                # it holds all we hold: nothing to send, and no catch-up for
                # the key scan it would cost. The empty interval (head, head]
                # moves no position (the peer takes one from our opener).
                return self._send(peer, to, self._head, [], reply)
            return self._catch_up(peer, state, to, known, reply)
        acked = state.acked
        entries: list[Entry] = []
        records: list[_Change] = []  # the log record of each entry
        vv = known.vv
        settled = self._settled(vv)
        # The writers the peer lacks something of, with what it holds: only
        # they can put a change outside its clock.
        get = vv.get
        lagging = [(w, get(w, 0)) for w in self._top if w not in settled]
        held = self._ops
        for change in reversed(self._log.values()):
            if change.seq <= acked:
                break
            if change.origin == to:
                continue  # it all came from that peer: never send it back
            key = change.key
            if change.dots is None:
                flat = held[key]
                if type(flat) is tuple:
                    if settled.issuperset(flat[0::3]) or self._within(key, vv):
                        continue  # it reached that peer by another route
                    ops = _unflat(flat)
                else:
                    ops = flat  # type: ignore[assignment]
                    if settled.issuperset(ops.spans) or _within_lagging(ops, lagging):
                        continue
            else:
                ops = change.dots
                if settled.issuperset(ops.spans) or _within_lagging(ops, lagging):
                    continue
            delta = self._states[key] if change.delta is None else change.delta
            entries.append(Entry(key, delta, ops))
            records.append(change)
        if len(entries) > 1:
            order = sorted(range(len(entries)), key=lambda i: entries[i].key)
            entries = [entries[i] for i in order]
            records = [records[i] for i in order]
        return self._send(peer, to, acked, entries, reply, records=records)

    def _catch_up(
        self, peer: str, state: _Peer, to: str, known: CausalContext, reply: Reply
    ) -> list[Outgoing]:
        # The whole log interval (-1, head], as the keys it changed: every key
        # holding an operation the peer's prefix clock does not cover.
        self.stats.catch_ups += 1
        before = state.acked if state.acked is not None else state.caught_up
        state.caught_up = self._head
        self._moved(peer, before)
        vv = known.vv
        settled = self._settled(vv)
        held = self._ops
        entries = []
        for k in self._keys:
            flat = held[k]
            writers = flat[0::3] if type(flat) is tuple else flat.spans  # type: ignore[union-attr]
            if settled.issuperset(writers) or self._within(k, vv):
                continue
            entries.append(Entry(k, self._states[k], self._ranges(k)))
        return self._send(peer, to, -1, entries, reply)

    def _settled(self, vv: dict[str, int]) -> set[str]:
        """The writers whose every operation held here is at or below
        ``vv``: a key (or logged delta) written only by them is within it,
        told at C speed by a subset test instead of a comparison per writer
        (which grew to a sixth of the demo's CPU at 20,000 operations, as
        keys gain writers). Exact because every stretch held or logged ends
        at or below ``_top`` of its writer, and a writer leaves ``_top``
        only once no key holds it and every key that did is logged whole
        again. Cost: O(writers held)."""
        get = vv.get
        return {w for w, top in self._top.items() if top <= get(w, 0)}

    def _within(self, key: str, vv: dict[str, int]) -> bool:
        """Whether every operation ``key`` holds is at or below ``vv`` (as
        ``DotRanges.within``, on the flat form too). Cost: O(writers)."""
        held = self._ops[key]
        if type(held) is tuple:
            get = vv.get
            return all(
                held[i + 2] <= get(held[i], 0)  # type: ignore[call-overload]
                for i in range(0, len(held), 3)
            )
        return held.within(vv)  # type: ignore[union-attr]

    def _send(
        self, peer: str, to: str, start: int, entries: list[Entry], reply: Reply,
        *, records: list[_Change] | None = None,
    ) -> list[Outgoing]:
        # Frames bounded in bytes (messages.encode_interval), entries over
        # max_state left out: the peer would refuse them. ``records``: the
        # log record of each entry (a push's), which remember it as sent.
        held = self._acknowledged(to)  # of the peer's log: an ack rides along
        items = self._encode_entries(entries, records)
        state = self._peers.get(peer)
        if state is not None:
            state.told, state.told_clock = held, self._clock_changes
        tally = self._tally(() if state is None else state.asked)
        clock = self._context
        template = Push(self._replica, to, start, self._head, 0, 1, reply, clock, (), held, tally)
        if not items:
            # Most pushes of a round carry nothing (the peer's clock covers
            # all we hold): one frame, the bytes encode_interval writes for
            # it, without sizing room for entries (a third of an idle
            # round's time at any cluster size).
            frame = encode(template)
            if len(frame) <= self._max_frame:
                return [(peer, frame)]
        frames = encode_interval(
            template, items, max_frame=self._max_frame, max_entries=self._chunk
        )
        return [(peer, frame) for frame in frames]

    def _tally(self, ids: Iterable[str]) -> tuple[tuple[str, int, int], ...]:
        count, digest = self._count, self._digest
        return tuple((w, count.get(w, 0), digest.get(w, 0)) for w in sorted(ids)[:MAX_TALLY])

    # -- gossip in ------------------------------------------------------------------

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        """Handle one frame from node ``sender``; return the frames to send.

        A frame that does not parse, names a replica that is not ``sender``
        or one of its incarnations, or would change a key's type is dropped
        and counted in :attr:`stats`; nothing of it is applied.

        >>> r = Replicator("a", ["b"], rng=Random(1))
        >>> r.receive(0.0, "b", b"not cbor"), r.stats.malformed
        ([], 1)

        Cost: O(len(frame)) to parse, plus each entry's merge.
        """
        self._now = now
        self._hlc.advance(now)
        try:
            message = parse(frame, max_size=self._max_frame, max_state=self._max_state)
        except EntryTooLarge:
            self.stats.oversize += 1
            self.stats.refused += 1
            return []
        except DecodeError:
            self.stats.malformed += 1
            return []
        if not self._acceptable(sender, message):
            self.stats.refused += 1
            return []
        self._meet(sender, message.sender)
        if isinstance(message, Piece):
            return self._on_piece(now, sender, message)
        if isinstance(message, Push):
            return self._on_push(sender, message)
        if isinstance(message, Read):
            return self._on_read(sender, message)
        if isinstance(message, ReadResult):
            return self._on_result(sender, message)
        self._on_ack(sender, message.position)
        return []

    def _acceptable(self, sender: str, message: Message) -> bool:
        if not sent_by(message, sender):
            return False
        if isinstance(message, ReadResult):
            if message.to == self._replica and message.request > self._asked:
                return False  # an answer to a read this incarnation never asked
            message = Push(message.sender, message.to, -1, 0, 0, 1, Reply.NOTHING, CausalContext(),
                           () if message.entry is None else (message.entry,))
        if isinstance(message, Push):
            staged = self._staged
            for entry in message.entries:
                held = self._states.get(entry.key)
                if held is None and staged is not None:
                    held = staged._states.get(entry.key)
                if held is not None and type(held) is not type(entry.state):
                    return False
        return True

    def _meet(self, node: str, replica: str) -> None:
        peer = self._peers.get(node)
        if peer is None:
            peer = self._peers[node] = _Peer()
        if peer.replica != replica:
            # A new incarnation may have lost what the old one acknowledged.
            # Our position in the old one's log is of no use: its log is gone.
            if peer.replica is not None:
                self._positions.pop(peer.replica, None)
                self._parts.pop(peer.replica, None)
                if self._written is not None:
                    self._written.pop(peer.replica, None)
            peer.replica = replica
            peer.acked = None
            peer.context = None
            peer.caught_up = None
            peer.tally = {}
            self._held_by_all = None

    def _merge(self, entries: Iterable[Entry], origin: str, *, whole: bool = False) -> int:
        """Merge the entries that bring news and follow what their key holds;
        returns how many were gaps (left out). ``whole``: the entries are
        whole states (a catch-up, a read's answer), logged as the key they
        joined rather than kept as deltas. Cost: their merges."""
        gaps = 0
        empty = DotRanges()
        for arrived in entries:
            key = arrived.key
            known = self._ranges(key) if key in self._ops else None
            entry = arrived
            if known is not None and known.pruned:
                entry = self._strip_late(arrived, known)
            if known is not None and entry.dots.issubset(known):
                self.stats.redundant += 1
                continue
            if not entry.dots.follows(empty if known is None else known):
                gaps += 1  # merging it would claim operations we lack
                continue
            state = self._states.get(key)
            cleaned = False
            # Whether the key is now exactly the entry: all of it came from
            # ``origin`` (the entry's ranges hold all the key held).
            sole = known is None or known.issubset(entry.dots)
            if state is None:
                self._states[key] = entry.state.copy()
                self._keys.add(key)
            else:
                if entry.dots.pruned and known is not None:
                    cleaned = self._clean(key, state, known, entry.dots)
                    if cleaned:
                        self._put(key, known)
                state.merge(entry.state)
            self._hold(key, entry.dots)
            if cleaned or entry.dots.pruned:
                self._record_whole(key, self._replica)  # a delta cannot say what was cleaned
            elif whole or sole:
                # The log keeps an index, not a second copy of a state: the
                # key itself is the entry (sole), or a superset of a whole
                # state that would cost as much to keep as to send.
                self._record_whole(key, origin if sole else None)
            else:
                self._record(key, entry.state, entry.dots, origin)
            self.stats.merged += 1
            self._notify(key)
        self.stats.gaps += gaps
        return gaps

    def _strip_late(self, entry: Entry, known: DotRanges) -> Entry:
        """``entry`` with the stretches of ids pruned on its key (a marker
        here covers them) stripped and its state cleaned as the marker says
        (late data: already counted through the owner). Cost: O(writers)."""
        markers = known.pruned
        stale = [w for w in entry.dots.spans if w in markers]
        if not stale:
            return entry
        ops, state = entry.dots.copy(), entry.state.copy()
        for writer in stale:
            self.stats.late += 1
            if not known.covers(ops, writer):
                # Operations the owner did not fold: only a frame delayed
                # past the dissemination period can bring them. Lost.
                self.stats.conflicts += 1
            ops.strip(writer)
            if _prunable(state):
                state.cleanup(writer, *markers[writer][2:])
        return Entry(entry.key, state, ops)

    def _clean(self, key: str, state: CRDT, known: DotRanges, ops: DotRanges) -> bool:
        """Clean out of ``key`` the writers that markers in ``ops`` say were
        pruned into an owner's operation (Akka's pruningCleanup), so they
        are counted once, through the owner. Cost: O(markers)."""
        cleaned = False
        for writer, (hi, _, owner, base) in ops.pruned.items():
            span = known.strip(writer)
            if span is None:
                continue
            if span[2] > hi:
                self.stats.conflicts += 1  # as in _strip_late: lost
            if _prunable(state):
                state.cleanup(writer, owner, base)
            self._unhold(key, writer, span)
            self.stats.cleaned += 1
            cleaned = True
        return cleaned

    def _learn(self, clock: CausalContext) -> None:
        # We hold everything a peer held when it sent an interval we now have
        # whole, so its prefix clock too; capped at the highest dot we hold
        # of each writer, which a true one never exceeds.
        mine = self._context.vv
        for writer, upto in clock.vv.items():
            bound = min(upto, self._top.get(writer, 0))
            if bound > mine.get(writer, 0):
                mine[writer] = bound
                self._clock_changes += 1

    def _on_push(self, node: str, push: Push) -> list[Outgoing]:
        if push.to != self._replica and push.entries:
            # Computed for another incarnation of ours: it may leave out what
            # that one held and this one lost. Our answer names this
            # incarnation, which makes the peer forget what the old one held.
            # (An opener carries nothing, so it is answered as usual.)
            self.stats.stale += 1
            return [(node, encode(Ack(self._replica, self._acknowledged(push.sender))))]
        peer = self._peers[node]
        peer.context = push.context
        if push.tally:
            heard = -1.0 if self._now is None else self._now
            for writer, count, digest in push.tally:
                peer.tally[writer] = (count, digest, heard)
            if len(peer.tally) > 2 * MAX_TALLY:  # only ids still asked about matter
                peer.tally = {w: t for w, t in peer.tally.items() if w in self._asking}
        if push.reply is Reply.PUSH_AND_ASK:
            peer.asked = tuple(writer for writer, _, _ in push.tally)
        if push.to == self._replica:  # else its ack is of another incarnation's log
            self._on_ack(node, push.ack)
        position = self._positions.get(push.sender, -1)
        if (
            push.reply is Reply.PUSH_AND_ASK
            and push.start > position
            and leq_slots(push.context.vv, self._context.vv)
        ):
            # An opener: the sender's log up to start holds nothing beyond
            # its clock (see _gossip), and we hold all of that clock, so all
            # of that log. Sound for any incarnation of ours: it is what we
            # hold now, not what the sender thinks we hold.
            position = self._positions[push.sender] = push.start
        if self._merge(push.entries, push.sender, whole=push.start < 0):
            # An entry needs operations we lack: forget our position in the
            # sender's log, so that it answers with a catch-up of whole keys.
            if position >= 0:
                self._positions[push.sender] = -1
            self._parts.pop(push.sender, None)
        elif push.to == self._replica and push.start <= position < push.end:
            # The interval lifts us to its end once every part has arrived.
            # (Only one computed for this incarnation: what it left out as
            # held, another incarnation may have lost.)
            start, end, parts = self._parts.get(push.sender, (push.start, push.end, set()))
            if (start, end) != (push.start, push.end):
                parts = set()
            parts.add(push.part)
            if len(parts) == push.parts:
                self._positions[push.sender] = push.end
                self._parts.pop(push.sender, None)
                if push.parts == 1:
                    # (Parts of two sends of one interval may be filtered
                    # differently: learn only from an interval sent whole.)
                    self._learn(push.context)
            else:
                self._parts[push.sender] = (push.start, push.end, parts)
        if push.reply and push.part == 0:
            if push.reply is Reply.PUSH and self._quiet(peer):
                return []  # an exchange's last push would tell the peer nothing
            return self._gossip(node, reply=push.reply.answer)  # it carries our ack
        return [(node, encode(Ack(self._replica, self._acknowledged(push.sender))))]

    def _quiet(self, peer: _Peer) -> bool:
        """Whether the push that ends an exchange (and the ack it would
        draw) would tell ``peer`` nothing: it holds all our log (so no entry
        and no catch-up), asked about no retired id, and our last push to
        it already said our position in its log and our clock as they are
        now. Then an idle exchange takes two frames, not four. Cost: O(1)."""
        return (
            peer.acked == self._head
            and not peer.asked
            and peer.told_clock == self._clock_changes
            and peer.replica is not None
            and peer.told == self._acknowledged(peer.replica)
        )

    # -- sizes: frames in bytes, entries in pieces, states under max_state ----------

    def _configure_sizes(self, max_frame: int, max_state: int, piece_timeout: float) -> None:
        if not MIN_FRAME <= max_frame <= MAX_FRAME:
            raise ValueError(f"max_frame lies in [{MIN_FRAME}, {MAX_FRAME}], got {max_frame}")
        if max_state < 1 or not piece_timeout > 0:
            raise ValueError("max_state is at least 1 and piece_timeout positive")
        self._max_frame = max_frame
        self._max_state = max_state
        self._piece_timeout = piece_timeout
        # peer node -> the entries it is sending in pieces, by _entry_of
        self._pieces: dict[str, dict[tuple[object, ...], _Assembly]] = {}

    @property
    def max_frame(self) -> int:
        """The most bytes of any frame this replica sends or accepts.

        >>> Replicator("a", [], rng=Random(1)).max_frame
        1048576

        Cost: O(1).
        """
        return self._max_frame

    @property
    def max_state(self) -> int:
        """The most bytes of a key's encoded state that this replica sends or
        accepts (see :meth:`check_size`).

        >>> Replicator("a", [], rng=Random(1), max_state=1000).max_state
        1000

        Cost: O(1).
        """
        return self._max_state

    def check_size(self, key: str, state: CRDT) -> int:
        """The size of ``state``'s canonical encoding, if it may be held under
        ``key``; StateTooLarge (an InvalidOperation) if it is over
        ``max_state``. :meth:`update` does not check (it would encode the
        whole state on every update): call this where a write can grow a
        state past the limit, such as a register assigned a caller's value.

        >>> from crdts import ORSet
        >>> r = Replicator("a", [], rng=Random(1), max_state=64)
        >>> _ = r.update("s", ORSet, lambda s, me: s.add("x" * 10, me))
        >>> r.check_size("s", r.get("s"))
        30
        >>> _ = r.update("s", ORSet, lambda s, me: s.add("y" * 100, me))
        >>> r.check_size("s", r.get("s"))
        Traceback (most recent call last):
        ...
        crdts.errors.StateTooLarge: the state under 's' is 133 bytes, over the limit of 64

        Cost: an encoding of ``state``, O(size).
        """
        size = len(codec.encode(state))
        if size > self._max_state:
            raise StateTooLarge(
                f"the state under {key!r:.40} is {size} bytes, over the limit of {self._max_state}"
            )
        return size

    def _encode_entries(
        self, entries: list[Entry], records: list[_Change] | None = None
    ) -> list[bytes]:
        # Each entry as it travels (messages.encode_entry), but the state
        # encoded once, to leave out those over max_state. A push's entry is
        # remembered on its log record, by the operations it claims: a key's
        # state, or a logged delta, is exactly the join of the operations
        # its ranges claim (docs/bounded-state.md), so equal claims mean
        # equal bytes. A replica pushes one record to each peer that lacks
        # it, and again after losses: 48% of the entries the demo pushed
        # were a record sent before with the same claims, encoded again.
        # The memory is the log's: a record leaves once every peer holds it.
        # (Catch-ups, whole keyspaces mostly at each pair's first meeting,
        # are not remembered.)
        items = []
        for i, entry in enumerate(entries):
            record = None if records is None else records[i]
            claims: object = None
            if record is not None:
                claims = entry.dots.claims()
                sent = record.sent
                if sent is not None and sent[0] == claims:
                    items.append(sent[1])
                    continue
            state = codec.encode(entry.state)
            if len(state) > self._max_state:
                self.stats.oversize += 1
                continue
            item = entry_item(entry.key, state, entry.dots)
            if record is not None:
                record.sent = (claims, item)
            items.append(item)
        return items

    def _on_piece(self, now: float, node: str, piece: Piece) -> list[Outgoing]:
        # A peer's entries are reassembled into at most _ASSEMBLIES entries
        # and max_state plus a frame of bytes (the oldest dropped to make
        # room); what another incarnation of the sender sent, or what is
        # older than piece_timeout, is dropped. The entry is handled as the
        # push it belongs to once it is whole, so its part counts only then.
        bound = self._max_state + self._max_frame
        if piece.index + 1 < piece.count and len(piece.chunk) < MIN_FRAME // 2:
            self.stats.malformed += 1  # an honest sender cuts pieces of a frame each
            return []
        if piece.count > bound // (MIN_FRAME // 2) + 1:
            self.stats.oversize += 1
            self.stats.refused += 1
            return []
        gathering = self._pieces.setdefault(node, {})
        for other, gathered in list(gathering.items()):
            if gathered.piece.sender != piece.sender or now - gathered.since > self._piece_timeout:
                del gathering[other]
                self.stats.pieces_dropped += 1
        which = _entry_of(piece)
        held = gathering.get(which)
        if held is None:
            held = gathering[which] = _Assembly(piece, now, {})
        if piece.index in held.chunks:
            return []  # a duplicate
        held.chunks[piece.index] = piece.chunk
        held.size += len(piece.chunk)
        if held.size > bound:
            del gathering[which]
            self.stats.oversize += 1
            self.stats.refused += 1
            return []
        while len(gathering) > _ASSEMBLIES or sum(h.size for h in gathering.values()) > bound:
            oldest = min((h for h in gathering.values() if h is not held), key=_since)
            del gathering[_entry_of(oldest.piece)]
            self.stats.pieces_dropped += 1
        if len(held.chunks) < piece.count:
            return []
        del gathering[which]
        data = b"".join(held.chunks[i] for i in range(piece.count))
        try:
            raw = codec.decode_plain(data, max_size=bound, canonical=False)
            entries = parse_frame_entries([raw], size=len(data), max_state=self._max_state)
            check_claims(piece.sender, piece.start, piece.context, entries)
        except EntryTooLarge:
            self.stats.oversize += 1
            self.stats.refused += 1
            return []
        except DecodeError:
            self.stats.malformed += 1
            return []
        push = Push(
            piece.sender,
            piece.to,
            piece.start,
            piece.end,
            piece.part,
            piece.parts,
            piece.reply,
            piece.context,
            entries,
            piece.ack,
        )
        if not self._acceptable(node, push):
            self.stats.refused += 1
            return []
        self.stats.pieces += 1
        return self._on_push(node, push)

    def _expire_pieces(self, now: float) -> None:
        for node, gathering in list(self._pieces.items()):
            for which, held in list(gathering.items()):
                if now - held.since > self._piece_timeout:
                    del gathering[which]
                    self.stats.pieces_dropped += 1
            if not gathering:
                del self._pieces[node]

    def _on_ack(self, node: str, position: int) -> None:
        # Set, not max: an ack reports the peer's true position, which drops
        # when it restarts from an older state. Positions we never reached are lies.
        if position <= self._head:
            peer = self._peers[node]
            before = peer.acked if peer.acked is not None else peer.caught_up
            peer.acked = None if position < 0 else position
            self._moved(node, before)
            self._compact()
            if position >= 0:
                for hook in list(self._ack_hooks):
                    hook(node, position)

    # -- durable acknowledgements ---------------------------------------------------

    def _acknowledged(self, replica: str) -> int:
        # The position in ``replica``'s log an ack reports: all we hold, or
        # with durable_acks what the store has written of it. While every
        # change is written, all we hold is written: it is noted as such, so
        # that what was reported never goes back.
        position = self._positions.get(replica, -1)
        written = self._written
        if written is None:
            return position
        if self._written_version == self._version:
            if position > written.get(replica, -1):
                written[replica] = position
            return position
        return min(position, written.get(replica, -1))

    def durable_mark(self) -> DurableMark:
        """What this replica holds now, for :meth:`written` once a store has
        written every key changed so far (a node takes it with the keys of
        a commit, when no other change waits to be written).

        >>> Replicator("a", ["b"], rng=Random(1), durable_acks=True).durable_mark()
        DurableMark(version=0, positions={})

        Cost: O(peers' incarnations heard).
        """
        return DurableMark(self._version, dict(self._positions))

    def written(self, mark: DurableMark) -> list[Outgoing]:
        """Note that a store holds everything ``mark`` (:meth:`durable_mark`)
        saw; returns the acknowledgements it releases, to send like
        :meth:`tick`'s frames. With ``durable_acks`` a replica acknowledges a
        peer's log only as far as it is written (Akka's durable keys: a
        replica answers a write only once its store wrote it), so that a
        write at a consistency level survives the crash of the members it
        counted; until then acks report the position last written. Without
        ``durable_acks``: nothing to do, ``[]``.

        >>> from crdts import GCounter
        >>> a = Replicator("a", ["b"], rng=Random(1))
        >>> b = Replicator("b", ["a"], rng=Random(2), durable_acks=True)
        >>> _ = a.update("k", GCounter, lambda c, me: c.increment(me))
        >>> frames = [("a", dest, f) for dest, f in a.tick(0.0)]
        >>> while frames:
        ...     sender, dest, frame = frames.pop(0)
        ...     node = {"a": a, "b": b}[dest]
        ...     frames += [(dest, d, f) for d, f in node.receive(0.0, sender, frame)]
        >>> b.get("k").value, a.holders(a.head)   # merged, not written: no ack
        (1, [])
        >>> for dest, frame in b.written(b.durable_mark()):
        ...     _ = a.receive(0.0, "b", frame)
        >>> a.holders(a.head)
        ['b']

        Cost: O(peers).
        """
        written = self._written
        if written is None:
            return []
        self._written_version = max(self._written_version, mark.version)
        raised = set()
        for replica, position in mark.positions.items():
            if position > written.get(replica, -1):
                written[replica] = position
                raised.add(replica)
        return [
            (node, encode(Ack(self._replica, self._acknowledged(peer.replica))))
            for node, peer in sorted(self._peers.items())
            if peer.replica in raised
        ]

    # -- consistency levels: direct replication, acks, reads -------------------------

    @property
    def head(self) -> int:
        """The position of the latest change in this replica's log (0 before
        any): a peer whose acknowledged position is at least the head read
        right after an update holds that update (:meth:`holders`).

        >>> from crdts import GCounter
        >>> r = Replicator("a", [], rng=Random(1))
        >>> _ = r.update("k", GCounter, lambda c, me: c.increment(me)); r.head
        1

        Cost: O(1).
        """
        return self._head

    def holders(self, position: int) -> list[str]:
        """The peers (node ids, sorted) that have acknowledged this replica's
        log up to ``position`` or beyond: each holds every change made here
        up to that position (what a write at a consistency level waits for).
        An acknowledgement comes with every push a peer sends and answers
        every push it receives; :meth:`replicate` asks for them at once.

        >>> from crdts import GCounter
        >>> a, b = Replicator("a", ["b"], rng=Random(1)), Replicator("b", ["a"], rng=Random(2))
        >>> _ = a.update("k", GCounter, lambda c, me: c.increment(me))
        >>> frames = a.tick(0.0)
        >>> while frames:
        ...     dest, frame = frames.pop(0)
        ...     frames += {"a": a, "b": b}[dest].receive(0.0, "b" if dest == "a" else "a", frame)
        >>> a.holders(a.head)
        ['b']

        Cost: O(peers).
        """
        return [
            node
            for node in self._peer_ids
            if (state := self._peers.get(node)) is not None
            and state.acked is not None
            and state.acked >= position
        ]

    def subscribe_acks(self, hook: AckHook) -> Callable[[], None]:
        """Call ``hook(node, position)`` whenever peer ``node`` acknowledges
        that it holds this replica's log up to ``position`` (see
        :data:`AckHook`), so a write at a consistency level can wait for
        enough :meth:`holders` without polling. Returns a function that
        unsubscribes.

        >>> r = Replicator("a", ["b"], rng=Random(1))
        >>> stop = r.subscribe_acks(print); stop()

        Cost: O(1); each acknowledgement then costs one call per hook.
        """
        self._ack_hooks.append(hook)
        return lambda: self._ack_hooks.remove(hook)

    def replicate(self, nodes: Iterable[str]) -> list[Outgoing]:
        """The frames that push, now rather than at the next round, what each
        of ``nodes`` (peers; others are skipped) lacks of this replica's
        log: to a peer heard from already, the deltas since its acknowledged
        position (or a catch-up), which it answers with an acknowledgement;
        to one not heard from yet, the opening of a round, which ends the
        same way. Send them like :meth:`tick`'s (a ``SnapshotNode`` wraps
        them: ``SnapshotNode.wrap``). What a write at ``majority`` or
        ``all`` sends before it waits for :meth:`holders`.

        >>> from crdts import GCounter
        >>> a, b = Replicator("a", ["b"], rng=Random(1)), Replicator("b", ["a"], rng=Random(2))
        >>> _ = a.update("k", GCounter, lambda c, me: c.increment(me))
        >>> [dest for dest, _ in a.replicate(["b", "stranger"])]
        ['b']

        Cost: a push per peer, O(keys changed since its position) (a
        catch-up: O(keys) range tests).
        """
        out: list[Outgoing] = []
        for node in sorted(set(nodes)):
            if node not in self._peer_set:
                continue
            state = self._peers.get(node)
            if state is None or state.replica is None or state.context is None:
                out += self._gossip(node, reply=Reply.PUSH_AND_ASK)
            else:
                # Its clock is from its last push: it may lag what the peer
                # holds now (something redundant travels), never run ahead.
                out += self._push(node, state, Reply.NOTHING)
        return out

    def ask(self, key: str, nodes: Iterable[str]) -> tuple[int, list[Outgoing]]:
        """Ask each of ``nodes`` for its whole state under ``key`` (a read at
        a consistency level): the number the answers will carry, and the
        frames to send (as :meth:`replicate`'s). Each answer is merged into
        this replica as it arrives, as gossip would be, and then the hooks of
        :meth:`subscribe_answers` are called. A peer whose state is too
        large for one frame answers so, without it.

        >>> from crdts import GCounter
        >>> a, b = Replicator("a", ["b"], rng=Random(1)), Replicator("b", ["a"], rng=Random(2))
        >>> _ = b.update("k", GCounter, lambda c, me: c.increment(me, 5))
        >>> stop = a.subscribe_answers(print)
        >>> number, [(dest, frame)] = a.ask("k", ["b"])
        >>> [(back, answer)] = b.receive(0.0, "a", frame)    # b answers with its state
        >>> _ = a.receive(0.0, "b", answer)                  # a merges it
        b 1 k True
        >>> a.get("k").value
        5

        Cost: O(len(key)) per node asked; each answer costs the merge of
        its state.
        """
        if type(key) is not str:
            raise TypeError("keys are str")
        self._asked += 1
        frame = encode(Read(self._replica, self._asked, key))
        return self._asked, [(node, frame) for node in sorted(set(nodes)) if node != self._node]

    def subscribe_answers(self, hook: AnswerHook) -> Callable[[], None]:
        """Call ``hook(node, request, key, complete)`` once an answer to one
        of this replica's reads (:meth:`ask`) has been taken in (see
        :data:`AnswerHook`). Returns a function that unsubscribes.

        >>> r = Replicator("a", ["b"], rng=Random(1))
        >>> stop = r.subscribe_answers(print); stop()

        Cost: O(1); each answer then costs one call per hook.
        """
        self._answer_hooks.append(hook)
        return lambda: self._answer_hooks.remove(hook)

    def _on_read(self, node: str, read: Read) -> list[Outgoing]:
        # Answered with the whole key (its ranges from 0, which always
        # follow what the asker holds). One too large for a frame goes
        # ahead as a push in pieces, as gossip sends it, over an empty
        # interval (-1, -1] so that it moves no log position; the answer
        # then carries only its ranges, which the asker checks it holds
        # (a piece lost on the way leaves the read incomplete, never wrong).
        self.stats.reads += 1
        key, asker = read.key, read.sender
        state = self._states.get(key)
        if state is None:
            return [(node, encode(ReadResult(self._replica, asker, read.request, key, NOTHING)))]
        data = codec.encode(state)
        if len(data) > self._max_state:  # the asker would refuse it
            return [(node, encode(ReadResult(self._replica, asker, read.request, key, TOO_LARGE)))]
        ranges = self._ranges(key)
        item = entry_item(key, data, ranges)  # the entry as a push carries it
        if len(item) < self._max_frame:  # (else no answer frame could hold it)
            entry = Entry(key, state, ranges)
            frame = encode(ReadResult(self._replica, asker, read.request, key, HELD, entry))
            if len(frame) <= self._max_frame:
                return [(node, frame)]
        template = Push(self._replica, asker, -1, -1, 0, 1, Reply.NOTHING, self._context, (),
                        self._acknowledged(asker))
        frames = encode_interval(template, [item], max_frame=self._max_frame,
                                 max_entries=self._chunk)
        result = ReadResult(self._replica, asker, read.request, key, PUSHED, None, ranges)
        return [(node, f) for f in frames] + [(node, encode(result))]

    def _on_result(self, node: str, result: ReadResult) -> list[Outgoing]:
        if result.to != self._replica:
            self.stats.stale += 1  # an answer to an earlier incarnation's read
            return []
        self.stats.answers += 1
        complete = result.status != TOO_LARGE
        if result.entry is not None:
            self._merge([result.entry], result.sender, whole=True)
        elif result.ranges is not None:  # PUSHED: complete if its pieces all came
            complete = result.key in self._ops and result.ranges.issubset(
                self._ranges(result.key))
        for hook in list(self._answer_hooks):
            hook(node, result.request, result.key, complete)
        return []

    # -- restarting ---------------------------------------------------------------------

    @classmethod
    def from_entries(
        cls,
        node_id: str,
        entries: Iterable[Entry],
        peers: Iterable[str],
        *,
        rng: Random,
        incarnation: int | None = None,
        **options: Any,
    ) -> Replicator:
        """A replica of node ``node_id`` restarted from a keyspace given as
        entries (one per key, each a whole key: its ranges start at 0; the
        replica takes them over, so pass copies), under a new incarnation:
        ``incarnation`` is drawn from ``rng`` unless given, and the caller must
        never reuse one (``replication.store.restore`` restarts a replica from
        its store this way). ValueError for two entries of one key or a delta.

        >>> from crdts import GCounter
        >>> a = Replicator("a", [], rng=Random(1))
        >>> _ = a.update("k", GCounter, lambda c, me: c.increment(me, 2))
        >>> entries = [Entry("k", a.get("k"), a.ops("k"))]
        >>> b = Replicator.from_entries("a", entries, [], rng=Random(2), incarnation=1)
        >>> b.replica_id, b.get("k").value
        ('a~1', 2)

        Cost: O(number of entries + their writers).
        """
        number = rng.getrandbits(48) + 1 if incarnation is None else incarnation
        if number < 1:
            raise ValueError("a restored replica needs an incarnation >= 1")
        replica = cls(node_id, peers, rng=rng, incarnation=number, **options)
        for entry in entries:
            if entry.key in replica._states:
                raise ValueError(f"two entries for the key {entry.key!r}")
            if not entry.dots.is_whole():
                raise ValueError(f"the entry for {entry.key!r} is a delta, not a whole key")
            replica._states[entry.key] = entry.state
            replica._keys.add(entry.key)
            replica._hold(entry.key, entry.dots)
        replica._written_version = replica._version  # restored: written already
        return replica


class Staged:
    """Updates made on copies of their keys, not yet applied to the replica
    (see :meth:`Replicator.stage`). Each update takes the next dot, as
    :meth:`Replicator.update` would; a batch that is discarded issued none.

    >>> from random import Random
    >>> from crdts import GCounter
    >>> r = Replicator("a", [], rng=Random(1))
    >>> batch = r.stage()
    >>> delta, dot, observed = batch.update("k", GCounter, lambda c, me: c.increment(me))
    >>> dot, len(batch), batch.keys()
    (('a', 1), 1, ['k'])

    Cost: the first update of a key copies its state, O(size of the key);
    each update is then the type's mutator plus O(1).
    """

    __slots__ = ("_changes", "_copies", "_ops", "_replica", "_states")

    def __init__(self, replica: Replicator, *, copies: bool = False) -> None:
        self._replica = replica
        self._copies = copies  # see Replicator.stage
        self._states: dict[str, CRDT] = {}  # the keys' states with the updates made
        self._ops: dict[str, DotRanges] = {}
        self._changes: list[tuple[str, CRDT, tuple[str, int]]] = []

    def __len__(self) -> int:
        return len(self._changes)

    def update(
        self, key: str, new: Callable[[], C], mutate: Callable[[C, str], C]
    ) -> tuple[C, tuple[str, int], DotRanges]:
        """Like :meth:`Replicator.update`, on this batch's copy of ``key``:
        returns the delta, the update's dot and (a copy of) the operations it
        observed on its key. If ``mutate`` raises, nothing changes. The
        delta is also the batch's (:meth:`Replicator.apply` joins it): read
        or encode it, do not change it before the batch ends.

        >>> from random import Random
        >>> from crdts import PNCounter
        >>> batch = Replicator("a", [], rng=Random(1)).stage()
        >>> _ = batch.update("k", PNCounter, lambda c, me: c.increment(me, 5))
        >>> _, dot, observed = batch.update("k", PNCounter, lambda c, me: c.decrement(me, 2))
        >>> batch.entry("k").state.value, dot, observed.count("a")
        (3, ('a', 2), 1)

        Cost: see the class.
        """
        if type(key) is not str:
            raise TypeError("keys are str")
        check_text(key, "a key")
        replica = self._replica
        state = self._states.get(key)
        if state is None:
            held = replica._states.get(key)
            _check_kind(key, held, new)
            state = new() if held is None else held.copy()
            ops = DotRanges() if held is None else replica.ops(key)
        else:
            _check_kind(key, state, new)
            ops = self._ops[key]
        typed: C = state  # type: ignore[assignment]
        delta = mutate(typed, replica._replica)
        if type(delta) is not type(state):
            raise TypeError(f"the mutator returned {type(delta).__name__}, not a delta")
        observed = ops.copy()
        dot = (replica._replica, replica._counter + len(self._changes) + 1)
        ops.add(*dot)
        self._states[key], self._ops[key] = state, ops
        # The batch keeps the delta itself, not a copy per update (unless
        # asked: see Replicator.stage): apply copies each key's join once
        # for the log.
        self._changes.append((key, delta.copy() if self._copies else delta, dot))
        return delta, dot, observed

    def undo(self) -> None:
        """Take back the last update (for example when its key grew too
        large to keep).

        >>> from random import Random
        >>> from crdts import GCounter
        >>> batch = Replicator("a", [], rng=Random(1)).stage()
        >>> for n in (1, 100):
        ...     _ = batch.update("k", GCounter, lambda c, me: c.increment(me, n))
        >>> batch.undo(); batch.entry("k").state.value, len(batch)
        (1, 1)

        Cost: a copy of its key plus the merges of the batch's other updates
        of that key.
        """
        key, _, _ = self._changes.pop()
        replica = self._replica
        held = replica._states.get(key)
        earlier = [(d, dot) for k, d, dot in self._changes if k == key]
        if held is None and not earlier:
            del self._states[key], self._ops[key]
            return
        state = (held.copy() if held is not None else earlier[0][0].copy())
        ops = DotRanges() if held is None else replica.ops(key)
        for delta, dot in earlier:
            state.merge(delta)
            ops.merge(ops.successor(*dot))
        self._states[key], self._ops[key] = state, ops

    def keys(self) -> list[str]:
        """The keys this batch changed, sorted.

        >>> from random import Random
        >>> from crdts import GCounter
        >>> batch = Replicator("a", [], rng=Random(1)).stage()
        >>> for key in "ba":
        ...     _ = batch.update(key, GCounter, lambda c, me: c.increment(me))
        >>> batch.keys()
        ['a', 'b']

        Cost: O(k log k)."""
        return sorted(self._states)

    def entry(self, key: str) -> Entry:
        """Key ``key`` as the batch left it: its state and the dots it
        reflects (the live objects: read them, do not change them).

        >>> from random import Random
        >>> from crdts import GCounter
        >>> batch = Replicator("a", [], rng=Random(1)).stage()
        >>> _ = batch.update("k", GCounter, lambda c, me: c.increment(me, 4))
        >>> batch.entry("k").state.value, batch.entry("k").dots.contains("a", 1)
        (4, True)

        Cost: O(1).
        """
        return Entry(key, self._states[key], self._ops[key])
