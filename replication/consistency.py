"""Consistency levels for writes and reads, as in Akka Distributed Data
(``WriteMajority``/``ReadMajority``, ``WriteAll``/``ReadAll``), sans-I/O.

A write at level ``local`` returns once this replica holds it (and, in a
node, once its store committed it); at ``majority`` once ``N // 2 + 1`` of the
``N`` current members hold it, this node included; at ``all`` once every
current member does. A read at ``majority`` or ``all`` gathers the key's
state from that many members and merges it into this replica before it
answers. Because ``majority + majority > N``, a read at ``majority`` after a
write at ``majority`` returned sees the write, whichever nodes the two went
through (docs/consistency.md).

A level not reached in time is not an error: the write was applied (and
committed) here and still spreads by gossip, and a read still answers with
what it gathered. Both come back with a :class:`Reached` that says how far
they got (Akka's ``UpdateTimeout`` and ``GetFailure``, as values).

:class:`Quorum` counts, for one write or read, which members hold it or
answered; the driver feeds it acknowledgements
(``Replicator.subscribe_acks``) or answers (``Replicator.subscribe_answers``)
and owns the timeout. It never reads a clock.

Cost: O(members) to start a quorum, O(1) per node counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from crdts.base import expect_list, expect_replica, expect_uint
from crdts.errors import DecodeError

__all__ = ["LEVELS", "Level", "Quorum", "Reached", "check_level", "needed"]

Level: TypeAlias = Literal["local", "majority", "all"]
#: The levels, weakest first.
LEVELS: tuple[Level, ...] = ("local", "majority", "all")


def check_level(level: object) -> Level:
    """``level`` if it names a level; ValueError otherwise (a caller's
    mistake; a peer's or a client's bad level is refused the same way).

    >>> check_level("majority")
    'majority'
    >>> check_level("quorum")
    Traceback (most recent call last):
    ...
    ValueError: a consistency level is 'local', 'majority' or 'all', not 'quorum'

    Cost: O(1).
    """
    if level not in LEVELS:
        raise ValueError(f"a consistency level is 'local', 'majority' or 'all', not {level!r:.40}")
    return level


def needed(level: Level, members: int) -> int:
    """How many of ``members`` current members (this node included) must
    hold a write, or answer a read, for ``level``.

    >>> [needed(level, 5) for level in LEVELS], needed("majority", 4)
    ([1, 3, 5], 3)

    Cost: O(1).
    """
    if members < 1:
        raise ValueError("a cluster has at least one member: this node")
    if level == "local":
        return 1
    return members // 2 + 1 if level == "majority" else members


@dataclass(frozen=True, slots=True)
class Reached:
    """How far a write spread, or a read gathered: for ``level``, ``needed``
    of the current ``members`` (node ids, sorted, this node included) had
    to hold it or answer, and ``reached`` (sorted) did.

    >>> r = Reached("all", 5, ("n0", "n1", "n2"), ("n0", "n1", "n2", "n3", "n4"))
    >>> r.ok, r.missing
    (False, ('n3', 'n4'))
    >>> print(r)
    all not reached: 3 of 5 members (n0, n1, n2); needed 5; not n3, n4

    Cost: O(1) to read; O(members) to print or encode.
    """

    level: Level
    needed: int
    reached: tuple[str, ...]
    members: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether the level was reached.

        >>> Reached("majority", 2, ("a", "b"), ("a", "b", "c")).ok
        True

        Cost: O(1).
        """
        return len(self.reached) >= self.needed

    @property
    def missing(self) -> tuple[str, ...]:
        """The members not reached, sorted.

        >>> Reached("all", 3, ("a", "b"), ("a", "b", "c")).missing
        ('c',)

        Cost: O(members).
        """
        held = set(self.reached)
        return tuple(m for m in self.members if m not in held)

    def __str__(self) -> str:
        verdict = "reached" if self.ok else "not reached"
        text = (
            f"{self.level} {verdict}: {len(self.reached)} of {len(self.members)} members"
            f" ({', '.join(self.reached)}); needed {self.needed}"
        )
        return f"{text}; not {', '.join(self.missing)}" if self.missing else text

    def to_payload(self) -> list[object]:
        """``[level, needed, [reached...], [members...]]``, as the client
        protocol carries it.

        >>> Reached.from_payload(Reached("local", 1, ("a",), ("a",)).to_payload())
        Reached(level='local', needed=1, reached=('a',), members=('a',))

        Cost: O(members).
        """
        return [self.level, self.needed, list(self.reached), list(self.members)]

    @classmethod
    def from_payload(cls, raw: object) -> Reached:
        """Inverse of :meth:`to_payload` for untrusted input; DecodeError
        otherwise.

        >>> Reached.from_payload(["most", 1, [], []])
        Traceback (most recent call last):
        ...
        crdts.errors.DecodeError: reached: unknown level 'most'

        Cost: O(members).
        """
        fields = expect_list(raw, "reached")
        if len(fields) != 4:
            raise DecodeError("reached: expected [level, needed, reached, members]")
        level = fields[0]
        if level not in LEVELS:
            raise DecodeError(f"reached: unknown level {level!r:.40}")
        count = expect_uint(fields[1], "reached needed", 1)
        reached = tuple(expect_replica(x, "reached") for x in expect_list(fields[2], "reached"))
        members = tuple(expect_replica(x, "members") for x in expect_list(fields[3], "members"))
        if not set(reached) <= set(members) or count > len(members):
            raise DecodeError("reached: nodes reached that are not members, or too many needed")
        return cls(level, count, reached, members)


class Quorum:
    """Counts which of the current members hold one write, or answered one
    read, until ``level`` is reached. This node counts from the start (it
    holds its own write; it merges every answer into its own state).

    >>> q = Quorum("majority", "n0", ["n0", "n1", "n2", "n3", "n4"])
    >>> q.done, q.add("n3"), q.add("stranger"), q.add("n1")
    (False, False, False, True)
    >>> print(q.reached)
    majority reached: 3 of 5 members (n0, n1, n3); needed 3; not n2, n4

    Cost: O(members) to make; :meth:`add` O(1).
    """

    __slots__ = ("_held", "_level", "_members", "_needed")

    def __init__(self, level: Level, me: str, members: Iterable[str]) -> None:
        self._level = check_level(level)
        self._members = frozenset(members) | {me}
        self._needed = needed(self._level, len(self._members))
        self._held = {me}

    @property
    def done(self) -> bool:
        """Whether the level is reached.

        >>> Quorum("local", "a", ["a", "b"]).done, Quorum("all", "a", ["a", "b"]).done
        (True, False)

        Cost: O(1).
        """
        return len(self._held) >= self._needed

    @property
    def waiting_for(self) -> list[str]:
        """The members not counted yet, sorted: the ones to push to or ask.

        >>> Quorum("all", "b", ["a", "b", "c"]).waiting_for
        ['a', 'c']

        Cost: O(members).
        """
        return sorted(self._members - self._held)

    def add(self, node: str) -> bool:
        """Count member ``node`` (a node that is not a current member is not
        counted); whether the level is reached now.

        >>> q = Quorum("majority", "a", ["a", "b", "c"])
        >>> q.add("z"), q.add("c"), q.add("c")
        (False, True, True)

        Cost: O(1).
        """
        if node in self._members:
            self._held.add(node)
        return self.done

    @property
    def reached(self) -> Reached:
        """How far it got, now.

        >>> Quorum("all", "a", ["a", "b"]).reached
        Reached(level='all', needed=2, reached=('a',), members=('a', 'b'))

        Cost: O(members log members).
        """
        return Reached(
            self._level, self._needed, tuple(sorted(self._held)), tuple(sorted(self._members))
        )
