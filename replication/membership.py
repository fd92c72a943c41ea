"""Cluster membership that changes: join through seeds, leave, a failure
detector, down, sans-I/O.

A :class:`Membership` is driven like the replicator (``replication.transport``):
``tick(now)`` once per gossip interval and ``receive(now, sender, frame)`` for
each of its frames, each returning the frames to send. It never sleeps, reads a
clock or touches a socket; its random choices come from the ``rng`` it is given.
:class:`MemberNode` multiplexes it with a replica (or a ``SnapshotNode``) on one
transport and makes the replica's peers follow the members.

The state is a CRDT (a :class:`MemberSet`): one :class:`Member` record per
incarnation, keyed by its replica id (``node`` or ``node~N``: a restart is a
new member, as in Akka, where a member is an address and a uid). A record
holds the member's address (so a joiner learns where everyone is), its
:class:`Status` and, while the status is a transitional one, the set of
members that have *seen* it. Records join by the lexicographic order of
``(status, seen)``: the higher status wins with its seen set; equal statuses
join their seen sets (and keep the larger address, which never differs for
honest members). Statuses only rise::

    joining < up < leaving < exiting < down < removed

and ``removed`` is final: a removed member never comes back (its node comes
back as a new incarnation, a new member). Since every change is a join, any
two nodes that have exchanged their states hold the same members, whatever
the order, loss or duplication of frames.

Who moves a record up (no leader; each rule is monotone, so any member may
apply it once it holds, and doing it twice or concurrently is harmless):

- ``joining -> up`` when every reachable live member has seen the joining
  record (a node that has not joined yet promotes nothing);
- ``leaving -> exiting`` by the leaving member itself, once every reachable
  live member has seen it leaving and its replica has handed its operations
  to a peer that stays (``ready_to_exit``, :meth:`Replicator.handed_off
  <replication.replicator.Replicator.handed_off>` to the
  :meth:`~Membership.staying_nodes` under :class:`MemberNode`: two leavers
  must not hand off to each other);
- ``exiting -> removed`` and ``down -> removed`` by any member, once every
  reachable live member other than the one going has seen it;
- ``-> down`` by an operator (:meth:`Membership.down`), by the auto-down
  policy (a member unreachable for ``auto_down_after``; off by default, as
  on both sides of a partition it downs the other side), or by a restarted
  node for its own earlier incarnations.

Failure detection is local (each node's own view, not gossiped): every frame
from a node (membership's or the replica's) is a heartbeat; a node is
*unreachable* when the detector says so (phi accrual, Hayashibara et al.
2004, as in Akka and Cassandra; or a timeout with jitter drawn from the
seeded rng) and reachable again with the next frame it sends. Unreachable
members do not block the rules above; they stay the replica's peers until
removed.

Wire form (canonical CBOR, ``crdts.codec.encode_plain``): ``["mb", 1, sender,
0, digest]`` a heartbeat (every tick, to every live member; ``digest``, 16
bytes of SHA-256 of the state), and ``["mb", 1, sender, 1, reply, records]``
the whole state (``reply`` 1: answer with yours if it differs), each record
``[member, address, status, [seen...]]`` sorted by member. Every tick a node
opens a push-pull exchange of states with one member (chosen by the seeded
rng) whose last heartbeat told of a digest other than its own, so states
spread epidemically in O(log N) rounds at one state frame per node per
round; a heartbeat from a node that is no member (a downed one still alive)
is answered with the state, so it learns it was removed. :func:`parse` turns untrusted bytes into a
message or raises ``DecodeError``; a frame is bounded by ``MAX_MEMBERS``
records and ``max_size`` bytes, and a bad one changes nothing.

Tombstones: a removed record is kept (so a late copy of the member's earlier
record cannot bring it back) for ``tombstone_ttl`` of this node's time after
it saw the removal, and at most ``max_tombstones`` of them (the oldest go
first), as Akka prunes gossip tombstones after a day. A node cut off for
longer than that can bring a removed member back; restart it instead.

Cost: a tick is O(members) plus a heartbeat frame per live member (O(N^2)
frames per interval for the cluster: membership is for tens to hundreds of
nodes); merging a state is O(records + seen entries); the state is
O(members + members in transition x members).
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from random import Random
from typing import Literal, Protocol

from crdts import codec
from crdts.base import check_replica, expect_list, expect_replica
from crdts.errors import DecodeError, InvalidOperation
from replication.messages import DEFAULT_FRAME
from replication.transport import Node, Outgoing

__all__ = [
    "MAX_MEMBERS",
    "Heartbeat",
    "Member",
    "MemberEvent",
    "MemberNode",
    "MemberSet",
    "Membership",
    "MembershipSettings",
    "MembershipStats",
    "State",
    "Status",
    "is_membership_frame",
    "node_of",
    "parse",
]

#: The most records a state (and so a frame) may hold, tombstones included.
MAX_MEMBERS = 4096
#: The longest address a record may carry.
MAX_ADDRESS = 256
_TAG = "mb"
_VERSION = 1
_HEARTBEAT, _STATE = 0, 1
# Every membership frame opens with an array head and then the text "mb":
# a driver can route it without parsing (see is_membership_frame).
_PREFIX = b"\x62mb"


class Status(IntEnum):
    """A member's status: the chain its records join along."""

    JOINING = 0
    UP = 1
    LEAVING = 2
    EXITING = 3
    DOWN = 4
    REMOVED = 5


#: The statuses of a member that takes part in gossip.
LIVE = frozenset({Status.JOINING, Status.UP, Status.LEAVING, Status.EXITING})
# Statuses whose rules wait until every member has seen them.
_TRANSITIONAL = frozenset({Status.JOINING, Status.LEAVING, Status.EXITING, Status.DOWN})


def node_of(member: str) -> str:
    """The node id of a member (a replica id: ``node`` or ``node~N``).

    >>> node_of("n2~41"), node_of("n2"), node_of("a~b")
    ('n2', 'n2', 'a~b')

    Cost: O(len(member)).
    """
    node, sep, number = member.rpartition("~")
    return node if sep and node and number.isdigit() else member


@dataclass(frozen=True, slots=True)
class Member:
    """One incarnation's record: its replica id (``member``), the address to
    reach its node at, its status, and who has seen that status (only while
    it is transitional).

    >>> Member("n1~7", "127.0.0.1:7001", Status.UP).node
    'n1'
    """

    member: str
    address: str
    status: Status
    seen: frozenset[str] = frozenset()

    @property
    def node(self) -> str:
        """The member's node id.

        >>> Member("n1~7", "h:1", Status.UP).node
        'n1'

        Cost: O(len(member)).
        """
        return node_of(self.member)

    def join(self, other: Member) -> Member:
        """The least record above both (the same member's).

        >>> a = Member("x", "h:1", Status.JOINING, frozenset({"x"}))
        >>> b = Member("x", "h:1", Status.JOINING, frozenset({"y"}))
        >>> sorted(a.join(b).seen), a.join(Member("x", "h:1", Status.UP)).status.name
        (['x', 'y'], 'UP')

        Cost: O(seen).
        """
        if self.status != other.status:
            return self if self.status > other.status else other
        address = max(self.address, other.address)
        if address == self.address and other.seen <= self.seen:
            return self
        if address == other.address and self.seen <= other.seen:
            return other
        return Member(self.member, address, self.status, self.seen | other.seen)

    def to_payload(self) -> list[object]:
        """``[member, address, status, [seen...]]``. Cost: O(seen)."""
        return [self.member, self.address, int(self.status), sorted(self.seen)]

    @classmethod
    def from_payload(cls, raw: object) -> Member:
        """Inverse of :meth:`to_payload` for untrusted input; DecodeError
        otherwise. Cost: O(size)."""
        fields = expect_list(raw, "member")
        if len(fields) != 4:
            raise DecodeError("member: expected [member, address, status, seen]")
        member = expect_replica(fields[0], "member id")
        address, status, seen = fields[1], fields[2], expect_list(fields[3], "member seen")
        if type(address) is not str or len(address) > MAX_ADDRESS:
            raise DecodeError(f"member: an address is a str of at most {MAX_ADDRESS} characters")
        if type(status) is not int or not 0 <= status <= Status.REMOVED:
            raise DecodeError(f"member: unknown status {status!r:.20}")
        if len(seen) > MAX_MEMBERS or not all(type(s) is str and s for s in seen):
            raise DecodeError("member: seen is a list of member ids")
        if seen and status not in _TRANSITIONAL:
            raise DecodeError("member: only a transitional status is seen")
        return cls(member, address, Status(status), frozenset(seen))  # type: ignore[arg-type]


class MemberSet:
    """The membership state: a join-semilattice of :class:`Member` records.

    >>> a, b = MemberSet(), MemberSet()
    >>> _ = a.put(Member("x", "h:1", Status.UP))
    >>> _ = b.put(Member("x", "h:1", Status.LEAVING, frozenset({"x"})))
    >>> _ = b.put(Member("y", "h:2", Status.JOINING, frozenset({"y"})))
    >>> a.merge(b); [(m.member, m.status.name) for m in a]
    [('x', 'LEAVING'), ('y', 'JOINING')]

    Cost: ``put`` O(seen); ``merge`` O(records + seen entries).
    """

    TYPE_TAG = "Members"
    FORMAT_VERSION = 1
    __slots__ = ("_order", "_records")

    def __init__(self, records: Iterable[Member] = ()) -> None:
        self._records: dict[str, Member] = {}
        self._order: list[str] | None = None  # the member ids sorted, while no id comes or goes
        for record in records:
            self.put(record)

    def put(self, record: Member) -> Member | None:
        """Join ``record`` in; the member's new record if that changed it,
        else None.

        >>> s = MemberSet(); r = Member("x", "h:1", Status.UP)
        >>> s.put(r) == r, s.put(r)
        (True, None)

        Cost: O(seen).
        """
        held = self._records.get(record.member)
        joined = record if held is None else held.join(record)
        if joined is held:
            return None
        if held is None:
            self._order = None
        self._records[record.member] = joined
        return joined

    def merge(self, other: MemberSet) -> None:
        """Join ``other`` into this state in place.

        >>> s = MemberSet([Member("x", "h:1", Status.UP)])
        >>> s.merge(MemberSet([Member("x", "h:1", Status.REMOVED)])); s.get("x").status.name
        'REMOVED'

        Cost: O(its records).
        """
        if type(other) is not type(self):
            raise TypeError("merge with a MemberSet only")
        for record in other._records.values():
            self.put(record)

    def get(self, member: str) -> Member | None:
        """The record of ``member``, or None.

        >>> MemberSet().get("x") is None
        True

        Cost: O(1).
        """
        return self._records.get(member)

    def drop(self, member: str) -> None:
        """Forget a record (tombstones only: see the module docstring).

        >>> s = MemberSet([Member("x", "h:1", Status.REMOVED)]); s.drop("x"); len(s)
        0

        Cost: O(1).
        """
        if self._records.pop(member, None) is not None:
            self._order = None

    def __iter__(self) -> Iterator[Member]:
        if self._order is None:
            self._order = sorted(self._records)
        records = self._records
        return iter([records[member] for member in self._order])

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, member: object) -> bool:
        return member in self._records

    def copy(self) -> MemberSet:
        """An independent copy.

        >>> s = MemberSet([Member("x", "h:1", Status.UP)]); s.copy() == s
        True

        Cost: O(records).
        """
        out = MemberSet()
        out._records = dict(self._records)
        out._order = self._order
        return out

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._records == other._records

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MemberSet({list(self)!r})"

    def to_payload(self) -> list[object]:
        """The records, sorted by member. Cost: O(size)."""
        return [record.to_payload() for record in self]

    @classmethod
    def from_payload(cls, raw: object) -> MemberSet:
        """Inverse of :meth:`to_payload` for untrusted input: DecodeError
        for a bad record, a member twice, or more than ``MAX_MEMBERS``.
        Cost: O(size)."""
        items = expect_list(raw, "members")
        if len(items) > MAX_MEMBERS:
            raise DecodeError(f"members: more than {MAX_MEMBERS}")
        out = cls()
        for item in items:
            record = Member.from_payload(item)
            if record.member in out._records:
                raise DecodeError(f"members: {record.member!r:.40} twice")
            out._records[record.member] = record
        return out

    def set_address(self, member: str, address: str) -> None:
        """Replace a record's address (its own node's, before it is sent).

        >>> s = MemberSet([Member("x", "h:0", Status.UP)]); s.set_address("x", "h:1")
        >>> s.get("x").address
        'h:1'

        Cost: O(1).
        """
        record = self._records[member]
        self._records[member] = Member(member, address, record.status, record.seen)

    def digest(self) -> bytes:
        """16 bytes that differ (but for a SHA-256 collision) when states do.

        >>> len(MemberSet().digest()), MemberSet().digest() == MemberSet().digest()
        (16, True)

        Cost: O(size).
        """
        return hashlib.sha256(codec.encode_plain(self.to_payload())).digest()[:16]


# -- messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """"I am alive, and my state's digest is ``digest``"."""

    sender: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class State:
    """The sender's whole state; ``reply``: answer with yours if it differs."""

    sender: str
    reply: bool
    members: MemberSet
    #: The digest of ``members`` (``MemberSet.digest``); parse takes it from
    #: the frame's bytes, which are canonical, without encoding them again.
    digest: bytes = b""


def encode(message: Heartbeat | State) -> bytes:
    """The frame of ``message``.

    >>> parse(encode(Heartbeat("a", b"0123456789abcdef")))
    Heartbeat(sender='a', digest=b'0123456789abcdef')

    Cost: O(size).
    """
    if isinstance(message, Heartbeat):
        return codec.encode_plain([_TAG, _VERSION, message.sender, _HEARTBEAT, message.digest])
    fields = [_TAG, _VERSION, message.sender, _STATE, int(message.reply)]
    return codec.encode_plain([*fields, message.members.to_payload()])


def is_membership_frame(frame: bytes) -> bool:
    """Whether ``frame`` is membership's (to route it without parsing).

    >>> is_membership_frame(encode(Heartbeat("a", bytes(16)))), is_membership_frame(b"junk")
    (True, False)

    Cost: O(1).
    """
    return frame[1:4] == _PREFIX


def parse(frame: bytes, *, max_size: int = DEFAULT_FRAME) -> Heartbeat | State:
    """The message in ``frame``; DecodeError for anything else.

    >>> parse(b"junk")
    Traceback (most recent call last):
    ...
    crdts.errors.DecodeError: malformed CBOR: ...

    Cost: O(len(frame)); frames over ``max_size`` are refused before parsing.
    """
    raw = expect_list(codec.decode_plain(frame, max_size=max_size), "frame")
    if len(raw) < 5 or raw[0] != _TAG or raw[1] != _VERSION or type(raw[1]) is not int:
        raise DecodeError("not a membership frame of a known version")
    sender, kind = expect_replica(raw[2], "membership sender"), raw[3]
    if kind == _HEARTBEAT and len(raw) == 5 and type(raw[4]) is bytes and len(raw[4]) == 16:
        return Heartbeat(sender, raw[4])
    if kind == _STATE and len(raw) == 6 and type(raw[4]) is int and raw[4] in (0, 1):
        members = MemberSet.from_payload(raw[5])
        # The records' encoding is the frame's tail: the frame is canonical.
        head = len(codec.encode_plain(raw[:5]))  # its array head is as long as the frame's
        digest = hashlib.sha256(frame[head:]).digest()[:16]
        return State(sender, bool(raw[4]), members, digest)
    raise DecodeError(f"membership frame: bad kind {kind!r:.20} or fields")


# -- failure detection ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MembershipSettings:
    """How a :class:`Membership` detects failures and keeps tombstones, in
    the time unit of its driver (seconds under TCP, rounds in simulation).

    ``detector`` "phi": unreachable when phi (Hayashibara et al.) over the
    last ``window`` heartbeat intervals passes ``phi_threshold``, with
    ``acceptable_pause`` added to the mean interval and ``min_std`` as the
    least deviation (Akka's defaults, scaled); ``first_interval`` is the
    estimate before two heartbeats arrived. "timeout": unreachable after
    ``timeout`` plus a jitter drawn uniformly in ``[0, jitter]`` (from the
    seeded rng) at each heartbeat, so that a whole cluster does not decide at
    once. ``auto_down_after``: down a member unreachable that long (None:
    never, the default). ``max_size``: the largest frame parsed.

    >>> MembershipSettings().detector, MembershipSettings().auto_down_after
    ('phi', None)
    """

    detector: Literal["phi", "timeout"] = "phi"
    phi_threshold: float = 8.0
    acceptable_pause: float = 3.0
    min_std: float = 0.5
    window: int = 100
    first_interval: float = 1.0
    timeout: float = 5.0
    jitter: float = 1.0
    auto_down_after: float | None = None
    tombstone_ttl: float = 24 * 3600.0
    max_tombstones: int = 1000
    max_size: int = DEFAULT_FRAME

    def __post_init__(self) -> None:
        if self.detector not in ("phi", "timeout"):
            raise ValueError("detector is 'phi' or 'timeout'")
        numbers = (self.phi_threshold, self.acceptable_pause, self.min_std, self.first_interval,
                   self.timeout, self.jitter, self.tombstone_ttl)
        if not all(math.isfinite(x) and x >= 0 for x in numbers) or self.window < 2:
            raise ValueError("settings are finite, not negative, and window is at least 2")
        if self.auto_down_after is not None and not self.auto_down_after >= 0:
            raise ValueError("auto_down_after is None or not negative")
        if self.max_tombstones < 0 or self.max_size < 1024:
            raise ValueError("max_tombstones >= 0 and max_size >= 1024")


class _Heartbeats:
    """Arrivals from one node, for the detector."""

    __slots__ = ("deadline", "intervals", "last", "since")

    def __init__(self, now: float, first: float) -> None:
        self.last = now
        self.intervals: deque[float] = deque([first])
        self.deadline = math.inf  # timeout detector: when it turns unreachable
        self.since: float | None = None  # unreachable since


def _phi(elapsed: float, mean: float, std: float) -> float:
    # Akka's logistic approximation of the normal CDF's tail, in -log10.
    y = (elapsed - mean) / std
    e = math.exp(-y * (1.5976 + 0.070566 * y * y)) if abs(y) < 20 else (0.0 if y > 0 else math.inf)
    if elapsed > mean:
        return -math.log10(e / (1.0 + e)) if e > 0 else math.inf
    return -math.log10(1.0 - 1.0 / (1.0 + e)) if math.isfinite(e) else 0.0


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """Something that happened to a member: ``kind`` is a status's name in
    lower case (``"joining"``, ``"up"``, ..., ``"removed"``: the record
    changed to it here), or ``"unreachable"`` / ``"reachable"`` (this node's
    detector changed its mind about the member's node)."""

    kind: str
    member: Member


@dataclass(slots=True)
class MembershipStats:
    """Counters of one node's membership."""

    malformed: int = 0  # frames that did not parse
    refused: int = 0  # frames that named another sender, or would pass MAX_MEMBERS
    states_sent: int = 0
    heartbeats_sent: int = 0
    tombstones_dropped: int = 0


class Membership:
    """One node's membership: its own record, what it knows of the others,
    and its failure detector.

    >>> from random import Random
    >>> a = Membership("a", "a", rng=Random(1))            # founds a cluster
    >>> b = Membership("b", "b", seeds=["a"], rng=Random(2))
    >>> frames = b.tick(0.0)                                  # b asks a seed
    >>> while frames:                                         # a perfect network
    ...     dest, frame = frames.pop(0)
    ...     frames += {"a": a, "b": b}[dest].receive(0.0, "b" if dest == "a" else "a", frame)
    >>> for t in (1.0, 2.0):
    ...     frames = a.tick(t) + b.tick(t)
    ...     while frames:
    ...         dest, frame = frames.pop(0)
    ...         frames += {"a": a, "b": b}[dest].receive(t, "b" if dest == "a" else "a", frame)
    >>> a.state == b.state
    True
    >>> [(m.member, m.status.name) for m in b.members]
    [('a', 'UP'), ('b', 'UP')]

    ``member`` is this incarnation's replica id, ``address`` where its node
    is reached (what joiners will dial), ``seeds`` destinations to ask to
    join (not needed to found a cluster). Events go to :meth:`subscribe`'s
    callbacks.

    Cost: see the module docstring.
    """

    def __init__(
        self,
        member: str,
        address: str,
        *,
        seeds: Iterable[str] = (),
        rng: Random,
        settings: MembershipSettings | None = None,
    ) -> None:
        check_replica(member)
        if len(address) > MAX_ADDRESS:
            raise InvalidOperation(f"an address is at most {MAX_ADDRESS} characters")
        self._member = member
        self._node = node_of(member)
        self._rng = rng
        self.settings = settings or MembershipSettings()
        self._seeds = [s for s in dict.fromkeys(seeds) if s != self._node]
        self._state = MemberSet([Member(member, address, Status.JOINING, frozenset({member}))])
        # A founder (no seeds) is a member at once; a joiner once a member
        # has answered with a state that holds its record.
        self._joined = not self._seeds
        self._beats: dict[str, _Heartbeats] = {}  # node -> arrivals
        self._unreachable: set[str] = set()
        self._removed_at: dict[str, float] = {}  # tombstone -> when seen here
        self._digest: bytes | None = None
        self._live: set[str] | None = None  # cached live_nodes()
        self._digests: dict[str, bytes] = {}  # node -> digest it last told us
        self._frames: dict[bool, tuple[bytes, bytes]] = {}  # reply -> (digest, frame)
        self._subscribers: list[Callable[[MemberEvent], None]] = []
        self._now = 0.0
        #: Asked before this member moves itself from leaving to exiting:
        #: has its data reached a peer? (MemberNode: Replicator.handed_off.)
        self.ready_to_exit: Callable[[], bool] = lambda: True
        self.stats = MembershipStats()

    # -- reads -----------------------------------------------------------------------------

    @property
    def member_id(self) -> str:
        """This incarnation's member id (its replica id).

        >>> Membership("a~3", "h:1", rng=Random(1)).member_id
        'a~3'

        Cost: O(1).
        """
        return self._member

    @property
    def node_id(self) -> str:
        """This node's id.

        >>> Membership("a~3", "h:1", rng=Random(1)).node_id
        'a'

        Cost: O(1).
        """
        return self._node

    @property
    def status(self) -> Status:
        """This member's own status.

        >>> Membership("a", "a", rng=Random(1)).status.name
        'JOINING'

        Cost: O(1).
        """
        record = self._state.get(self._member)
        return Status.REMOVED if record is None else record.status

    @property
    def joined(self) -> bool:
        """Whether a member has taken this one in (a founder always has).

        >>> Membership("b", "b", seeds=["a"], rng=Random(1)).joined
        False

        Cost: O(1).
        """
        return self._joined

    @property
    def members(self) -> list[Member]:
        """Every member not removed (live or down), sorted by member id.

        >>> m = Membership("a", "h:1", rng=Random(1)); _ = m.tick(0.0)
        >>> m.members
        [Member(member='a', address='h:1', status=<Status.UP: 1>, seen=frozenset())]

        Cost: O(members).
        """
        return [m for m in self._state if m.status != Status.REMOVED]

    @property
    def unreachable(self) -> frozenset[str]:
        """The node ids this node's detector suspects now.

        >>> Membership("a", "h:1", rng=Random(1)).unreachable
        frozenset()

        Cost: O(u).
        """
        return frozenset(self._unreachable)

    @property
    def removed(self) -> frozenset[str]:
        """The removed members whose tombstones this node holds.

        >>> m = Membership("a", "h:1", rng=Random(1)); _ = m.down("a"); _ = m.tick(0.0)
        >>> m.removed
        frozenset({'a'})

        Cost: O(members).
        """
        return frozenset(m.member for m in self._state if m.status == Status.REMOVED)

    @property
    def state(self) -> MemberSet:
        """A copy of the state (for tests and tools).

        >>> len(Membership("a", "h:1", rng=Random(1)).state)
        1

        Cost: O(records).
        """
        return self._state.copy()

    @property
    def refusals(self) -> int:
        """Frames dropped as malformed or refused.

        >>> m = Membership("a", "h:1", rng=Random(1)); _ = m.receive(0.0, "b", b"x")
        >>> m.refusals
        1

        Cost: O(1).
        """
        return self.stats.malformed + self.stats.refused

    def live_nodes(self) -> set[str]:
        """The node ids with a member not removed (this node's included):
        the replica's peers follow them.

        >>> Membership("a~1", "h:1", rng=Random(1)).live_nodes()
        {'a'}

        Cost: O(members).
        """
        return set(self._live_nodes())

    def _live_nodes(self) -> set[str]:
        if self._live is None:
            self._live = {m.node for m in self._state if m.status != Status.REMOVED}
        return self._live

    def staying_nodes(self) -> list[str]:
        """The other nodes with a member joining or up, reachable: those a
        leaving member may hand its data to.

        >>> Membership("a", "h:1", rng=Random(1)).staying_nodes()
        []

        Cost: O(members).
        """
        return sorted({
            m.node for m in self._state
            if m.status <= Status.UP and m.node != self._node and m.node not in self._unreachable
        })

    def subscribe(self, callback: Callable[[MemberEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every :class:`MemberEvent` from now
        on (a member removed for good: ``event.kind == "removed"``); returns
        a function that unsubscribes.

        >>> m = Membership("a", "a", rng=Random(1)); seen = []
        >>> stop = m.subscribe(lambda e: seen.append((e.kind, e.member.member)))
        >>> _ = m.tick(0.0); seen
        [('up', 'a')]

        Cost: O(1); each event costs its callbacks.
        """
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    # -- commands ----------------------------------------------------------------------------

    def set_address(self, address: str) -> None:
        """Say where this node is reached, before it has sent anything (a
        node listening on port 0 learns its port once it listens).

        >>> m = Membership("a", "h:0", rng=Random(1)); m.set_address("h:7001")
        >>> m.state.get("a").address
        'h:7001'

        Cost: O(1).
        """
        own = self._state.get(self._member)
        if own is not None and own.address == address:
            return  # already so (over NATS the address is known from the start)
        if self._digest is not None or len(address) > MAX_ADDRESS:
            raise InvalidOperation("the address is set before the first tick, in 256 characters")
        self._state.set_address(self._member, address)

    def leave(self) -> bool:
        """Leave the cluster gracefully: this member becomes ``leaving``, then
        ``exiting`` once everyone saw it and its data is handed off, then
        ``removed`` by the others. False if it was leaving or gone already.

        >>> m = Membership("a", "a", rng=Random(1)); _ = m.tick(0.0)
        >>> m.leave(), m.status.name
        (True, 'LEAVING')

        Cost: O(1).
        """
        own = self._state.get(self._member)
        if own is None or own.status >= Status.LEAVING:
            return False
        self._set(own, Status.LEAVING)
        return True

    def down(self, target: str) -> list[str]:
        """Mark the members of node ``target`` (or the one member ``target``)
        down: an operator's decision that they are gone; they are removed once
        every reachable member has seen it. Returns the member ids downed.

        >>> m = Membership("a", "a", rng=Random(1))
        >>> m.down("b"), m.down("a")
        ([], ['a'])

        Cost: O(members).
        """
        out = []
        for record in self._state:
            if record.status < Status.DOWN and target in (record.member, record.node):
                self._set(record, Status.DOWN)
                out.append(record.member)
        return out

    # -- the Node surface ----------------------------------------------------------------

    def tick(self, now: float) -> list[Outgoing]:
        """Detect failures, apply the rules, drop old tombstones; returns a
        heartbeat for every live member's node, its state to one member
        whose state differs, and to every seed until it has joined (after
        that, to every seed not known as a member).

        >>> Membership("b", "b", seeds=["a"], rng=Random(1)).tick(0.0)[0][0]
        'a'

        Cost: O(members + seen entries), and a frame per live member.
        """
        self._now = now
        if self.status == Status.REMOVED:
            return []  # gone for good: this incarnation never speaks again
        self._detect(now)
        self._see()
        self._rules()
        self._drop_tombstones(now)
        out: list[Outgoing] = []
        mine = self._digest_now()
        beat = encode(Heartbeat(self._member, mine))
        others = sorted(self.live_nodes() - {self._node})
        for node in others:
            out.append((node, beat))
        self.stats.heartbeats_sent += len(out)
        # Push-pull with one member whose state (as its last heartbeat said)
        # differs from ours: O(N) state frames a round however many differ.
        # Unreachable ones too: a member that does not know of this one yet
        # sends it nothing, so it looks unreachable until told.
        differ = [n for n in others if self._digests.get(n) != mine]
        if differ:
            out.append((self._rng.choice(differ), self._state_frame(reply=True)))
        # Seeds not known as members yet, before joining and after: two
        # parts of a cluster that formed apart (a partition at start) find
        # each other through them once it heals.
        known = {m.node for m in self._state} | {m.address for m in self._state}
        contacts = self._seeds if not self._joined else [
            seed for seed in self._seeds if seed not in known
        ]
        if contacts:
            state = self._state_frame(reply=True)
            out += [(seed, state) for seed in contacts]
        return out

    def heard(self, now: float, node: str) -> None:
        """A frame arrived from ``node`` (any layer's): a heartbeat for the
        detector, and reachable again if it was not.

        >>> m = Membership("a", "h:1", rng=Random(1)); m.heard(0.0, "stranger")
        >>> m.unreachable
        frozenset()

        Cost: O(1).
        """
        if node == self._node:
            return
        beats = self._beats.get(node)
        if beats is None:
            if node not in self._live_nodes():
                return  # not a member (yet): nothing to watch
            beats = self._beats[node] = _Heartbeats(now, self.settings.first_interval)
        else:
            if now > beats.last:
                beats.intervals.append(now - beats.last)
                if len(beats.intervals) > self.settings.window:
                    beats.intervals.popleft()
            beats.last = max(beats.last, now)
        s = self.settings
        beats.deadline = beats.last + s.timeout + self._rng.uniform(0.0, s.jitter)
        if node in self._unreachable:
            self._unreachable.discard(node)
            beats.since = None
            self._emit_node("reachable", node)

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        """Handle one membership frame from node ``sender``: a bad frame, one
        naming another node, or a state that would pass ``MAX_MEMBERS`` is
        dropped and counted, nothing of it applied.

        >>> m = Membership("a", "a", rng=Random(1))
        >>> m.receive(0.0, "b", b"junk"), m.stats.malformed
        ([], 1)

        Cost: O(len(frame)) and the merge.
        """
        try:
            message = parse(frame, max_size=self.settings.max_size)
        except DecodeError:
            self.stats.malformed += 1
            return []
        if node_of(message.sender) != sender:
            self.stats.refused += 1
            return []
        if isinstance(message, State):
            incoming = message.members
            new = sum(1 for m in incoming if m.member not in self._state)
            if len(self._state) + new > MAX_MEMBERS:
                self.stats.refused += 1
                return []
        self._now = now
        self.heard(now, sender)
        if isinstance(message, Heartbeat):
            self._digests[sender] = message.digest
            if self.status == Status.REMOVED or message.digest == self._digest_now() \
                    or sender in self._live_nodes():
                return []
            # Not a member (yet, or any more: a member downed while alive):
            # tell it what we know, so it learns its fate.
            return [(sender, self._state_frame(reply=False))]
        theirs = message.members
        self._digests[sender] = message.digest
        for record in theirs:
            self._put(record)
        if message.sender != self._member and self._member in theirs and self._joined is False:
            self._joined = True
        # Answer a state that differs from ours, and always a joiner's: it
        # waits to see its record in another member's state.
        joining = theirs.get(message.sender)
        if message.reply and (
            self._digests[sender] != self._digest_now()
            or (joining is not None and joining.status == Status.JOINING)
        ):
            return [(sender, self._state_frame(reply=False))]
        return []

    # -- inside ------------------------------------------------------------------------------

    def _state_frame(self, *, reply: bool) -> bytes:
        self.stats.states_sent += 1
        digest = self._digest_now()
        held = self._frames.get(reply)
        if held is None or held[0] != digest:
            held = self._frames[reply] = (digest, encode(State(self._member, reply, self._state)))
        return held[1]

    def _digest_now(self) -> bytes:
        if self._digest is None:
            self._digest = self._state.digest()
        return self._digest

    def _put(self, record: Member) -> None:
        before = self._state.get(record.member)
        after = self._state.put(record)
        if after is None:
            return
        self._digest = None
        if before is None or before.status != after.status:
            self._live = None
            if after.status == Status.REMOVED:
                self._removed_at.setdefault(after.member, self._now)
            elif after.status in LIVE and after.node not in self._beats and \
                    after.node != self._node:
                self._beats[after.node] = _Heartbeats(self._now, self.settings.first_interval)
                s = self.settings
                self._beats[after.node].deadline = self._now + s.timeout + self._rng.uniform(
                    0.0, s.jitter)
            self._emit(after.status.name.lower(), after)
            if after.status == Status.REMOVED and after.node not in self._live_nodes():
                self._beats.pop(after.node, None)
                if after.node in self._unreachable:
                    self._unreachable.discard(after.node)

    def _set(self, record: Member, status: Status) -> None:
        seen = frozenset({self._member}) if status in _TRANSITIONAL else frozenset()
        self._put(Member(record.member, record.address, status, seen))

    def _emit(self, kind: str, record: Member) -> None:
        event = MemberEvent(kind, record)
        for callback in list(self._subscribers):
            callback(event)

    def _emit_node(self, kind: str, node: str) -> None:
        for record in self._state:
            if record.node == node and record.status != Status.REMOVED:
                self._emit(kind, record)

    def _suspects(self, now: float, beats: _Heartbeats) -> bool:
        s = self.settings
        if s.detector == "timeout":
            return now > beats.deadline
        n = len(beats.intervals)
        mean = sum(beats.intervals) / n
        var = sum((x - mean) ** 2 for x in beats.intervals) / n
        std = max(math.sqrt(var), s.min_std)
        return _phi(now - beats.last, mean + s.acceptable_pause, std) > s.phi_threshold

    def _detect(self, now: float) -> None:
        live = self.live_nodes()
        for node in [n for n in self._digests if n not in live]:
            del self._digests[node]  # bounded by the members, not by history
        for node, beats in list(self._beats.items()):
            if node not in live:
                del self._beats[node]
                self._unreachable.discard(node)
                continue
            if node not in self._unreachable and self._suspects(now, beats):
                self._unreachable.add(node)
                beats.since = now
                self._emit_node("unreachable", node)
            after = self.settings.auto_down_after
            if node in self._unreachable and after is not None and beats.since is not None \
                    and now - beats.since >= after:
                self.down(node)

    def _see(self) -> None:
        # Every live member adds itself to what it has seen.
        if self.status not in LIVE:
            return
        me = self._member
        for record in list(self._state):
            if record.status in _TRANSITIONAL and me not in record.seen:
                self._put(Member(record.member, record.address, record.status, record.seen | {me}))
        # A restarted node's earlier incarnations are gone: down them.
        for record in list(self._state):
            if record.node == self._node and record.member != me and record.status < Status.DOWN:
                self._set(record, Status.DOWN)

    def _rules(self) -> None:
        if not self._joined:
            return
        watchers = {
            m.member for m in self._state if m.status in LIVE and m.node not in self._unreachable
        }
        for record in list(self._state):
            status, others = record.status, watchers - {record.member}
            if status == Status.JOINING and watchers <= record.seen:
                self._set(record, Status.UP)
            elif status == Status.LEAVING and record.member == self._member \
                    and watchers <= record.seen and self.ready_to_exit():
                self._set(record, Status.EXITING)
            elif status in (Status.EXITING, Status.DOWN) and others <= record.seen \
                    and (record.member != self._member or status == Status.DOWN or not others):
                self._set(record, Status.REMOVED)

    def _drop_tombstones(self, now: float) -> None:
        s = self.settings
        held = self._removed_at
        expired = [m for m, at in held.items() if now - at >= s.tombstone_ttl]
        excess = len(held) - len(expired) - s.max_tombstones
        if excess > 0:
            rest = sorted((at, m) for m, at in held.items() if now - at < s.tombstone_ttl)
            expired += [m for _, m in rest[:excess]]
        for member in expired:
            if member == self._member:
                continue
            del held[member]
            self._state.drop(member)
            self._live = None
            self._digest = None
            self.stats.tombstones_dropped += 1


# -- wiring ---------------------------------------------------------------------------------


class _Peered(Protocol):
    """What :class:`MemberNode` needs of a replica: ``Replicator``'s peers."""

    @property
    def node_id(self) -> str: ...

    def add_peer(self, node: str) -> bool: ...

    def remove_peer(self, node: str) -> bool: ...

    def retire(self, node: str) -> list[str]: ...

    def handed_off(self, to: Iterable[str] | None = None) -> bool: ...


class MemberNode:
    """A ``Node`` that runs a :class:`Membership` beside another node (a
    ``Replicator`` or a ``SnapshotNode`` wrapping ``replica``) on one
    transport, and makes ``replica``'s peers follow the members: a node is
    added as a peer when one of its members appears, removed when its last
    member is removed. Membership frames are told apart by their first
    bytes (:func:`is_membership_frame`); every frame counts as a heartbeat.
    Once this member is removed, the inner node is neither ticked nor given
    frames.

    >>> from random import Random
    >>> from replication.replicator import Replicator
    >>> from replication.simnet import SimulatedNetwork
    >>> net = SimulatedNetwork(seed=1)
    >>> for name, seeds in (("a", []), ("b", ["a"]), ("c", ["b"])):
    ...     r = Replicator(name, [], rng=Random(name))
    ...     net.add(MemberNode(r, Membership(name, name, seeds=seeds, rng=Random(name))))
    >>> net.run_rounds(5)
    >>> net.node("c").replica.peers, [m.status.name for m in net.node("a").membership.members]
    (['a', 'b'], ['UP', 'UP', 'UP'])

    Cost: the inner node's, plus the membership's.
    """

    def __init__(self, replica: _Peered, membership: Membership, inner: Node | None = None) -> None:
        if replica.node_id != membership.node_id:
            raise ValueError("the replica and the membership name different nodes")
        self._replica = replica
        self._inner: Node = inner if inner is not None else replica  # type: ignore[assignment]
        self._membership = membership
        membership.ready_to_exit = lambda: replica.handed_off(membership.staying_nodes())
        self._unsubscribe = membership.subscribe(self._follow)
        for node in sorted(membership.live_nodes() - {membership.node_id}):
            replica.add_peer(node)

    @property
    def node_id(self) -> str:
        """The node's id.

        >>> from replication.replicator import Replicator
        >>> MemberNode(Replicator("a", [], rng=Random(1)),
        ...            Membership("a", "a", rng=Random(1))).node_id
        'a'

        Cost: O(1).
        """
        return self._membership.node_id

    @property
    def replica(self) -> _Peered:
        """The replica whose peers follow the members.

        >>> from replication.replicator import Replicator
        >>> node = MemberNode(Replicator("a", ["b"], rng=Random(1)),
        ...                   Membership("a", "a", rng=Random(1)))
        >>> node.replica.peers
        ['b']

        Cost: O(1).
        """
        return self._replica

    @property
    def inner(self) -> Node:
        """The node membership runs beside (the replica unless told).

        >>> from replication.replicator import Replicator
        >>> r = Replicator("a", [], rng=Random(1))
        >>> MemberNode(r, Membership("a", "a", rng=Random(1))).inner is r
        True

        Cost: O(1).
        """
        return self._inner

    @property
    def membership(self) -> Membership:
        """The membership.

        >>> from replication.replicator import Replicator
        >>> MemberNode(Replicator("a", [], rng=Random(1)),
        ...            Membership("a", "a", rng=Random(1))).membership.member_id
        'a'

        Cost: O(1).
        """
        return self._membership

    @property
    def refusals(self) -> int:
        """Frames refused by the membership or by the inner node.

        >>> from replication.replicator import Replicator
        >>> node = MemberNode(Replicator("a", [], rng=Random(1)),
        ...                   Membership("a", "a", rng=Random(1)))
        >>> _ = node.receive(0.0, "b", b"junk"); node.refusals
        1

        Cost: O(1).
        """
        return self._membership.refusals + self._inner.refusals

    def _follow(self, event: MemberEvent) -> None:
        node = event.member.node
        if node == self._membership.node_id:
            return
        if event.kind == "removed":
            if node not in self._membership.live_nodes():
                # Gone for good: none of its incarnations issues again, so
                # their entries are pruned once every member holds them all.
                self._replica.remove_peer(node)
                self._replica.retire(node)
        elif event.member.status in LIVE:
            self._replica.add_peer(node)

    def tick(self, now: float) -> list[Outgoing]:
        """Membership's tick, then the inner node's (while a member).

        >>> from replication.replicator import Replicator
        >>> node = MemberNode(Replicator("a", ["b"], rng=Random(1)),
        ...                   Membership("a", "a", rng=Random(1)))
        >>> [dest for dest, _ in node.tick(0.0)]    # gossip to its static peer
        ['b']

        Cost: both.
        """
        out = self._membership.tick(now)
        if self._membership.status == Status.REMOVED:
            return out
        return out + self._inner.tick(now)

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        """Route ``frame`` to the membership or the inner node.

        >>> from replication.replicator import Replicator
        >>> node = MemberNode(Replicator("a", [], rng=Random(1)),
        ...                   Membership("a", "a", rng=Random(1)))
        >>> node.receive(0.0, "b", encode(Heartbeat("b", bytes(16))))  # not a member
        [('b', ...)]

        Cost: theirs.
        """
        if is_membership_frame(frame):
            return self._membership.receive(now, sender, frame)
        self._membership.heard(now, sender)
        if self._membership.status == Status.REMOVED:
            return []  # gone for good: it takes nothing in that it could pass on
        return self._inner.receive(now, sender, frame)
