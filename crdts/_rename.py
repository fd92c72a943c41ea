"""Renaming a retired replica's dots into a live owner's: how the dotted
types (OR-Set, MV-Register) prune (``crdts.base.Prunable``).

A dot ``(removed, i)`` becomes ``(owner, base + i)``, where ``base`` is the
owner's highest dot in the state when the owner prunes: a block of the
owner's dots that nothing else uses (the owner issues its next dot above
it). Every replica that cleans ``removed`` out renames the same way, given
the same ``base`` (the replicator carries it in the pruning marker), so a
dot keeps naming the same add or write: a remove that observed ``(removed,
5)`` still removes the element renamed ``(owner, base + 5)``, and an add the
owner's state had seen removed stays removed. Nothing is folded or dropped.

The helpers work on the canonical payloads (``to_payload``), so they do not
depend on a type's internal layout. Cost: O(state) per rename: pruning is
rare.
"""

from __future__ import annotations

from typing import Protocol

from crdts.base import check_replica
from crdts.errors import InvalidOperation


class _Dotted(Protocol):
    def to_payload(self) -> list[object]: ...

    def cleanup(self, removed: str, owner: str, base: int) -> None: ...


def prune_by_renaming(state: _Dotted, removed: str, owner: str) -> int:
    """The owner's prune of a dotted type: rename ``removed``'s dots into a
    block above ``owner``'s highest dot in ``state``; returns that base.
    Cost: the state's ``cleanup``."""
    check_replica(owner)
    context = state.to_payload()[0]  # (the canonical form: whatever the layout)
    assert isinstance(context, list)
    base = context_top(context, owner)
    state.cleanup(removed, owner, base)
    return base


def check_rename(removed: str, owner: str, base: int) -> None:
    """InvalidOperation unless the ids are usable and distinct and ``base``
    is an int >= 0. Cost: O(1)."""
    check_replica(removed)
    check_replica(owner)
    if removed == owner:
        raise InvalidOperation(f"cannot prune {removed!r} into itself")
    if type(base) is not int or base < 0:
        raise InvalidOperation(f"a rename base is an int >= 0, not {base!r}")


def context_top(flat: list[object], replica: str) -> int:
    """The highest dot of ``replica`` in a causal context's payload, 0 if none."""
    for i in range(0, len(flat), 3):
        if flat[i] == replica:
            cloud = flat[i + 2]
            assert isinstance(cloud, list)
            return max(cloud) if cloud else flat[i + 1]  # type: ignore[return-value]
    return 0


def rename_context(flat: list[object], removed: str, owner: str, base: int) -> list[object]:
    """A causal context's payload with ``removed``'s dots moved to ``owner``
    at ``base`` (canonical: version vector plus the dots beyond its gaps)."""
    groups: dict[str, tuple[int, list[int]]] = {}
    for i in range(0, len(flat), 3):
        groups[flat[i]] = (flat[i + 1], list(flat[i + 2]))  # type: ignore[index, call-overload, assignment]
    moving = groups.pop(removed, None)
    if moving is None:
        return flat
    top, cloud = moving
    dots = set(groups.get(owner, (0, []))[1])
    dots.update(range(base + 1, base + top + 1))
    dots.update(base + c for c in cloud)
    vv = groups.get(owner, (0, []))[0]
    beyond = sorted(d for d in dots if d > vv)
    taken = 0
    while taken < len(beyond) and beyond[taken] == vv + 1:
        vv += 1
        taken += 1
    groups[owner] = (vv, beyond[taken:])
    out: list[object] = []
    for replica in sorted(groups):
        vv, rest = groups[replica]
        out += (replica, vv, rest)
    return out
