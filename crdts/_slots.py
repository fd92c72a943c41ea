"""Maps of replica id -> count joined by pointwise max: the state of a G-Counter
and of a vector clock, shared here so that both stay one loop wide."""

from __future__ import annotations

from crdts.base import (
    MAX_UINT,
    check_replica,
    expect_increasing,
    expect_list,
    expect_uints,
    share_at_c_speed,
)
from crdts.errors import DecodeError, InvalidOperation


def merge_max(mine: dict[str, int], theirs: dict[str, int]) -> None:
    """Join ``theirs`` into ``mine`` slot by slot. Cost: O(len(theirs))."""
    if not mine:
        mine.update(theirs)
        return
    get = mine.get
    for replica, count in theirs.items():
        if count > get(replica, 0):
            mine[replica] = count


def prune_slot(slots: dict[str, int], removed: str, owner: str) -> None:
    """Fold ``removed``'s slot into ``owner``'s (the sum: both counted events
    that happened) and drop it. InvalidOperation, changing nothing, if the
    ids are not usable or the same, or the owner's slot would overflow.
    Cost: O(1)."""
    check_replica(removed)
    check_replica(owner)
    if removed == owner:
        raise InvalidOperation(f"cannot prune {removed!r} into itself")
    count = slots.get(removed)
    if count is None:
        return
    total = slots.get(owner, 0) + count
    if total > MAX_UINT:
        raise InvalidOperation(f"the slot of {owner!r} would pass 2**64 - 1")
    del slots[removed]
    slots[owner] = total


def leq_slots(mine: dict[str, int], theirs: dict[str, int]) -> bool:
    """Every slot of ``mine`` is at most the same slot of ``theirs``."""
    get = theirs.get
    return all(count <= get(replica, 0) for replica, count in mine.items())


def ordered_flat(slots: dict[str, int]) -> tuple[list[object], dict[str, int]]:
    """``[replica, count, replica, count, ...]`` in replica order, and
    ``slots`` in that order: ``slots`` itself if it was, else a copy.

    A flat array encodes and decodes several times faster than a map of
    small entries. Canonical encodings list the slots by replica, so a map
    kept in replica order (``GCounter`` keeps the copy) flattens with no
    sort: checking the order is one C-speed pass (timsort finds one run),
    and the copy in order costs O(r log r), once each time an id arrives
    out of order. Cost: O(r) in order, else O(r log r).
    """
    replicas = list(slots)
    ordered = sorted(replicas)
    if ordered != replicas:  # the same objects when in order: compared by identity
        slots = dict(zip(ordered, map(slots.__getitem__, ordered), strict=True))
    flat: list[object] = [None] * (2 * len(ordered))
    flat[0::2] = ordered
    flat[1::2] = slots.values()
    return flat, slots


def flatten(slots: dict[str, int]) -> list[object]:
    """``[replica, count, ...]`` in the map's own order: the encoding of a map
    kept in replica order. Two slice assignments at C speed; Cost: O(r)."""
    flat: list[object] = [None] * (2 * len(slots))
    flat[0::2] = slots
    flat[1::2] = slots.values()
    return flat


def to_flat(slots: dict[str, int]) -> list[object]:
    """The flat array of :func:`ordered_flat`, for maps kept in any order."""
    return ordered_flat(slots)[0]


def from_flat(payload: object, what: str) -> dict[str, int]:
    """Inverse of :func:`to_flat` for untrusted input: canonical or DecodeError."""
    flat = expect_list(payload, what)
    if len(flat) <= _FEW:
        slots = _few_from_flat(flat)
        if slots is not None:
            return slots
    if len(flat) % 2:
        raise DecodeError(f"{what}: expected replica/count pairs")
    replicas, counts = flat[0::2], flat[1::2]
    if not set(map(type, replicas)) <= {str}:
        raise DecodeError(f"{what}: replica ids are str")
    expect_increasing(replicas, what)
    if replicas and not replicas[0]:  # strictly increasing: only the first can be ""
        raise DecodeError(f"{what}: empty replica id")
    # Zero slots are never written: a zero would give equal states two encodings.
    expect_uints(counts, what, low=1)
    # Long payloads' ids are not shared (crdts.base.share, as short ones'
    # are): hashing every id again cost 0.4x the cbor2 floor of decoding a
    # 100,000-replica counter, whose ids are mostly its own.
    return dict(zip(replicas, counts, strict=True))  # type: ignore[arg-type]


#: Payloads up to this many items are checked in one tight pass, which beats
#: the C-speed passes below on their fixed cost (a frame holds many small
#: counters); longer ones the other way round.
_FEW = 32


def _few_from_flat(flat: list[object]) -> dict[str, int] | None:
    """:func:`from_flat` of a short canonical payload; None if it is not
    (then the full checks name what is wrong)."""
    if len(flat) == 2:
        # One slot (most deltas): unpacked, without the loop's setup.
        replica, count = flat
        if type(replica) is str and replica and type(count) is int and count > 0:
            return {share_at_c_speed(replica): count}
        return None
    if len(flat) % 2:
        return None
    slots: dict[str, int] = {}
    prev = ""  # below every non-empty str
    it = iter(flat)
    for replica, count in zip(it, it, strict=False):  # length checked above
        if not (type(replica) is str and replica > prev and type(count) is int and count > 0):
            return None
        slots[share_at_c_speed(replica)] = count
        prev = replica
    return slots
