"""Strong eventual consistency, checked on a recorded cut of a cluster.

A :class:`~snapshot.cut.GlobalSnapshot` (Chandy and Lamport 1985) holds each
replica's keyspace, whose clock is exact (each key's dot ranges: the
operations it reflects; ``replication.dotranges``), and the replicator frames
that were in flight. :func:`check` gives
four verdicts on it, in this order:

1. *consistent cut* (Mattern 1989): no recorded state holds an operation its
   origin had not yet made when the origin was recorded. For every node ``i``
   with replica id ``r_i`` and every node ``j``, ``VC_j[r_i] <= VC_i[r_i]``,
   where ``VC[r]`` is the highest dot of ``r`` held under any key (``i`` holds
   every operation it made, so this is exact); the operations beyond are
   counted from the ranges (a lower bound, said so, when ranges interleave).
   Only the replica ids of the recorded incarnations are checked: dots of an
   old incarnation of a restarted node have no live owner to check against.
   Frames in flight are not checked here.
2. *strong convergence* (Shapiro, Preguica, Baquero and Zawirski 2011): replicas
   that hold the same operations (equal clocks) hold equal states, compared as
   canonical keyspace bytes.
3. *monotone*: clock order implies lattice order. Whenever ``a``'s clock is a
   subset of ``b``'s, every key of ``a`` is in ``b``, of the same type, and
   ``a``'s state is ``<=`` ``b``'s (``crdts.base.leq``).
4. *join equals specification*: the join of every recorded state and every
   entry in flight (:func:`join_cut`) is what the cluster converges to once the
   channels drain. For every key with logged operations, its value must equal
   the type's sequential specification (``History.spec(type).model``) over the
   logged operations whose dots the join covers for that key. Dots the log does
   not know are allowed (the log may not see every writer); a logged operation
   named by the cut under another key (the end of one of its ranges), or whose
   key the join lacks, is not. Entries in flight join as a replica merges
   them: a delta that would leave a hole in its key's ranges is left out.
   An entry whose type differs from the type most entries of its key have is
   an offence too. Without an operation log this verdict is not checked.

A verdict names its offenders (node ids) and says what is wrong in one plain
sentence per problem, at most :data:`MAX_DETAILS` of them.

Cost, for ``n`` recorded replicas: verdicts 1 to 3 are pairwise,
O(n^2 * (c + s)) for clocks of size ``c`` and states of size ``s`` (each
keyspace is encoded once, O(n * s)); verdict 4 is O(n * s) joins plus the
in-flight frames' size, plus the models over the logged operations (the
OR-Set and MV-Register models are quadratic in a key's operations).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from crdts import codec
from crdts.base import CRDT, leq
from replication.history import History, Operation
from replication.messages import Entry
from snapshot.cut import GlobalSnapshot, KeyspaceClock, LocalState, join_entries

__all__ = ["MAX_DETAILS", "SECReport", "Verdict", "check", "join_cut"]

#: Problems described per verdict; the rest are counted in a last line.
MAX_DETAILS = 10

CONSISTENT_CUT = "consistent cut"
STRONG_CONVERGENCE = "strong convergence"
MONOTONE = "monotone"
JOIN_EQUALS_SPEC = "join equals specification"
_NOT_CHECKED = "not checked (no operation log)"
_WIDTH = 29  # where SECReport.__str__ starts the status column


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's outcome: ``passed`` is True, False, or None when it was not
    checked; ``offenders`` are the node ids at fault; ``details`` one sentence
    per problem (at most :data:`MAX_DETAILS`, then ``"... and N more"``).

    >>> v = Verdict("monotone", False, ("a", "b"), ("b lacks key 'k'",))
    >>> v.passed, v.offenders
    (False, ('a', 'b'))

    Cost: O(1).
    """

    name: str
    passed: bool | None
    offenders: tuple[str, ...] = ()
    details: tuple[str, ...] = ()
    problems: int = 0  # in all, when ``details`` shows only the first ones

    @property
    def status(self) -> str:
        """``"ok"``, ``"FAILED: <first problem>"`` (with a count of the rest
        and the offenders when there are more), or why it was not checked.

        >>> Verdict("monotone", True).status
        'ok'

        Cost: O(size of the details).
        """
        if self.passed:
            return "ok"
        if self.passed is None:
            return self.details[0] if self.details else "not checked"
        first = self.details[0] if self.details else "no details"
        more = max(self.problems, len(self.details)) - 1
        if not more:
            return f"FAILED: {first}"
        return f"FAILED: {first} (and {more} more; offenders: {_names(self.offenders)})"


@dataclass(frozen=True, slots=True)
class SECReport:
    """The verdicts of :func:`check`, in order; ``str()`` gives one line each.

    >>> report = SECReport((Verdict("monotone", True),
    ...                     Verdict("join equals specification", None, (), ("not checked",))))
    >>> report.passed
    True
    >>> print(report)
    monotone ................... ok
    join equals specification .. not checked

    Cost: O(number of verdicts and their details).
    """

    verdicts: tuple[Verdict, ...]

    @property
    def passed(self) -> bool:
        """True iff no verdict failed (one not checked does not fail).

        >>> SECReport((Verdict("monotone", None), Verdict("consistent cut", False))).passed
        False

        Cost: O(number of verdicts).
        """
        return all(v.passed is not False for v in self.verdicts)

    def __str__(self) -> str:
        return "\n".join(
            f"{v.name} {'.' * max(2, _WIDTH - len(v.name) - 2)} {v.status}" for v in self.verdicts
        )


def check(snapshot: GlobalSnapshot, history: History | None = None) -> SECReport:
    """The four verdicts on ``snapshot`` (see the module docstring); the fourth
    needs ``history``, the log of the operations issued, and is not checked
    without it. Raises ValueError if the log holds a type it has no
    specification for.

    >>> from random import Random
    >>> from replication import Replicator
    >>> from snapshot.cut import SnapshotId
    >>> r = Replicator("a", [], rng=Random(1))
    >>> h = History(); h.apply(r, "hits", "GCounter", "increment", 2)
    >>> cut = GlobalSnapshot(SnapshotId("a", 1), {"a": LocalState.capture(r)})
    >>> check(cut, h).passed, check(cut).verdicts[3].passed
    (True, None)

    Cost: O(n^2 * (c + s)) for n replicas with clocks of size c and states of
    size s, plus the in-flight frames' size and the models over the log.
    """
    states = dict(sorted(snapshot.states.items()))
    keyspaces = {node: local.keyspace() for node, local in states.items()}
    return SECReport(
        (
            _consistent_cut(states),
            _strong_convergence(states, keyspaces),
            _monotone(states, keyspaces),
            _join_equals_spec(snapshot, states, history),
        )
    )


def join_cut(snapshot: GlobalSnapshot) -> dict[str, Entry]:
    """The join of every recorded state and every entry in flight, by key:
    what the cluster holds once its channels drain. For each key, entries of a
    type other than the one most of its entries have are left out (ties go to
    the type seen first: recorded states by node, then the channels in order).
    The entries are new objects; the snapshot is not changed.

    >>> from random import Random
    >>> from crdts import GCounter
    >>> from replication import Replicator
    >>> from snapshot.cut import SnapshotId
    >>> a, b = Replicator("a", [], rng=Random(1)), Replicator("b", [], rng=Random(2))
    >>> for r, n in ((a, 2), (b, 3)):
    ...     _ = r.update("hits", GCounter, lambda c, me: c.increment(me, n))
    >>> states = {r.node_id: LocalState.capture(r) for r in (a, b)}
    >>> join_cut(GlobalSnapshot(SnapshotId("a", 1), states))["hits"].state.value
    5

    Cost: O(total size of the states and the frames in flight).
    """
    joined, _ = _join(snapshot, dict(sorted(snapshot.states.items())))
    return joined


# -- the verdicts ------------------------------------------------------------------


def _consistent_cut(states: Mapping[str, LocalState]) -> Verdict:
    offenders: set[str] = set()
    details: list[str] = []
    for i, own in states.items():
        replica = own.replica
        for j, other in states.items():
            if j == i:
                continue
            beyond, exact = _beyond(other.clock, own.clock, replica)
            if beyond:
                offenders.update((i, j))
                details.append(
                    f"{j} holds {'' if exact else 'at least '}"
                    f"{_plural(beyond, 'operation')} of {replica} beyond {i}'s own cut"
                )
    return _verdict(CONSISTENT_CUT, offenders, details)


def _strong_convergence(
    states: Mapping[str, LocalState], keyspaces: Mapping[str, bytes]
) -> Verdict:
    groups: dict[bytes, list[str]] = {}
    for node, local in states.items():
        # Equal contexts have equal canonical encodings: a hashable key.
        groups.setdefault(codec.encode_plain(local.clock.to_payload()), []).append(node)
    offenders: set[str] = set()
    details: list[str] = []
    for nodes in groups.values():
        variants: dict[bytes, list[str]] = {}
        for node in nodes:
            variants.setdefault(keyspaces[node], []).append(node)
        if len(variants) > 1:
            offenders.update(nodes)
            split = " | ".join(", ".join(group) for group in variants.values())
            details.append(
                f"{_names(nodes)} hold the same operations but "
                f"{len(variants)} different keyspaces ({split})"
            )
    return _verdict(STRONG_CONVERGENCE, offenders, details)


def _monotone(states: Mapping[str, LocalState], keyspaces: Mapping[str, bytes]) -> Verdict:
    by_key = {node: {e.key: e.state for e in local.entries} for node, local in states.items()}
    offenders: set[str] = set()
    details: list[str] = []
    for a, low in states.items():
        for b, high in states.items():
            # Equal keyspaces are equal states: below each other, nothing to join.
            if a == b or keyspaces[a] == keyspaces[b] or not low.clock.issubset(high.clock):
                continue
            bad = [
                problem
                for key, state in by_key[a].items()
                if (problem := _not_below(key, state, a, by_key[b].get(key), b))
            ]
            if bad:
                offenders.update((a, b))
                rest = f" (and {_plural(len(bad) - 1, 'more key')})" if len(bad) > 1 else ""
                details.append(f"{a}'s clock is within {b}'s, but {bad[0]}{rest}")
    return _verdict(MONOTONE, offenders, details)


def _join_equals_spec(
    snapshot: GlobalSnapshot, states: Mapping[str, LocalState], history: History | None
) -> Verdict:
    if history is None:
        return Verdict(JOIN_EQUALS_SPEC, None, (), (_NOT_CHECKED,))
    joined, holders = _join(snapshot, states)
    offenders: set[str] = set()
    details: list[str] = []
    for key, node, where, its_type, key_type in holders.misfits:
        offenders.add(node)
        details.append(f"{where} holds {key!r} as {its_type}, the rest of the cut as {key_type}")
    # The ends of each key's ranges name operations of that key: one the
    # log puts on another key has gone astray.
    named: dict[tuple[str, int], set[str]] = {}
    for key, joined_entry in joined.items():
        for writer, (_, lo_dot, _, hi_dot) in joined_entry.dots.items():
            for dot in (lo_dot, hi_dot):
                if dot:
                    named.setdefault((writer, dot), set()).add(key)
    logged: dict[str, list[Operation]] = {}
    for op in history.operations:
        logged.setdefault(op.key, []).append(op)
    for key, ops in sorted(logged.items()):
        entry = joined.get(key)
        here = None if entry is None else entry.dots
        covered = history.survivors(key, ops, here)
        kept = {op.dot for op in ops if here is not None and history.holder(key, here, op.dot)}
        astray = [op for op in ops if op.dot not in kept and named.get(op.dot, {key}) - {key}]
        if astray:
            offenders.update(n for op in astray for n in _holding(states, op.dot))
            details.append(
                f"{_plural(len(astray), 'operation')} on {key!r} "
                f"{'is' if len(astray) == 1 else 'are'} in the cut under another key"
                + ("" if entry is not None else f", and the cut has no {key!r}")
            )
        if entry is None or not covered:
            continue
        want = history.spec(ops[0].type_name).model(covered)
        got = getattr(entry.state, "value", None)
        if got != want:
            offenders.update(holders.of(key))
            details.append(
                f"{key!r} joins to {got!r:.80}, the specification gives {want!r:.80} "
                f"over {_plural(len(covered), 'operation')}"
            )
    return _verdict(JOIN_EQUALS_SPEC, offenders, details)


# -- helpers -----------------------------------------------------------------------


@dataclass(slots=True)
class _Holders:
    """Who holds each key of a cut, and the entries left out of its join."""

    nodes: dict[str, set[str]]  # key -> nodes whose recorded state has it
    senders: dict[str, set[str]]  # key -> nodes with an entry for it in flight
    # (key, offending node, where it was found, its type, the key's type)
    misfits: list[tuple[str, str, str, str, str]]

    def of(self, key: str) -> set[str]:
        """The nodes holding ``key``; the senders of it if no state has it."""
        return self.nodes.get(key) or self.senders.get(key, set())


def _join(
    snapshot: GlobalSnapshot, states: Mapping[str, LocalState]
) -> tuple[dict[str, Entry], _Holders]:
    # (node named for it, where it was found, entry): states first, by node;
    # an entry in flight is named for the node that sent it.
    found: list[tuple[str, str | None, Entry]] = [
        (node, None, entry) for node, local in states.items() for entry in local.entries
    ]
    found += [
        (source, f"a frame in flight from {source} to {destination}", entry)
        for source, destination, entry in snapshot.in_flight()
    ]
    kinds: dict[str, Counter[type[CRDT]]] = {}
    for _, _, entry in found:
        kinds.setdefault(entry.key, Counter())[type(entry.state)] += 1
    # most_common keeps first-seen order among equal counts.
    kind_of = {key: counts.most_common(1)[0][0] for key, counts in kinds.items()}
    holders = _Holders({}, {}, [])
    fitting: list[Entry] = []
    for node, where, entry in found:
        key = entry.key
        if type(entry.state) is not kind_of[key]:
            holders.misfits.append(
                (key, node, where or node, type(entry.state).__name__, kind_of[key].__name__)
            )
            continue
        (holders.nodes if where is None else holders.senders).setdefault(key, set()).add(node)
        fitting.append(entry)
    joined, _ = join_entries(fitting)
    return dict(sorted(joined.items())), holders


def _beyond(theirs: KeyspaceClock, mine: KeyspaceClock, replica: str) -> tuple[int, bool]:
    """How many operations of ``replica`` ``theirs`` holds above the highest
    one ``mine`` holds, and whether that count is exact (else a lower bound:
    a stretch that straddles ``mine``'s top does not say which of its dots
    are below it)."""
    own_top = mine.top(replica)
    count, exact = 0, True
    for ranges in theirs.keys.values():
        span = ranges.spans.get(replica)
        if span is None or span[3] <= own_top:
            continue
        lo, lo_dot, hi, hi_dot = span
        n = hi - lo
        if own_top <= lo_dot:
            count += n
            continue
        low, high = max(1, n - (own_top - lo_dot)), min(n, hi_dot - own_top)
        count += low
        exact = exact and low == high
    return count, exact


def _not_below(key: str, low: CRDT, a: str, high: CRDT | None, b: str) -> str | None:
    """Why ``a``'s state ``low`` under ``key`` is not below ``b``'s, or None."""
    if high is None:
        return f"{b} lacks key {key!r}"
    if type(high) is not type(low):
        return (
            f"{b} holds {key!r} as {type(high).__name__}, "
            f"{a} as {type(low).__name__}"
        )
    if not leq(low, high):
        return f"{b}'s {key!r} is not above {a}'s"
    return None


def _holding(states: Mapping[str, LocalState], dot: tuple[str, int]) -> list[str]:
    # The nodes whose ranges name ``dot`` (under any key).
    writer, counter = dot
    return [
        node
        for node, local in states.items()
        if any(
            (span := e.dots.spans.get(writer)) is not None and counter in (span[1], span[3])
            for e in local.entries
        )
    ]


def _verdict(name: str, offenders: Iterable[str], details: Sequence[str]) -> Verdict:
    shown = list(details[:MAX_DETAILS])
    if len(details) > MAX_DETAILS:
        shown.append(f"... and {len(details) - MAX_DETAILS} more")
    return Verdict(name, not details, tuple(sorted(set(offenders))), tuple(shown), len(details))


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _names(nodes: Iterable[str], limit: int = 8) -> str:
    names = list(nodes)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"
