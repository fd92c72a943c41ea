"""Golden vectors: the wire format of every type, pinned byte for byte.

``tests/golden/vectors.json`` holds the canonical encoding of a few states of
each type. Each state is rebuilt here with the public API; its encoding must
equal the checked-in hex, and decoding the hex must give the state back. A
change to the format therefore shows up as a failing test and a diff of the
vectors, never silently. To add a state, add a builder to ``BUILDERS`` and run
``python -m tests.test_golden --write``; review the diff before committing it.
Changing an existing vector means a new format version and an upgrade path.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest

from crdts import GCounter, LWWRegister, MVRegister, ORMap, ORSet, PNCounter, VectorClock, codec
from crdts.base import CRDT, Atom

VECTORS = Path(__file__).parent / "golden" / "vectors.json"


def gcounter_one() -> GCounter:
    c = GCounter()
    c.increment("a", 3)
    return c


def gcounter_many() -> GCounter:
    c = GCounter()
    c.increment("b", 2**32)  # a five-byte integer head
    c.increment("a", 1)
    c.increment("é", 24)  # a non-ASCII replica id; 24 is the first two-byte integer
    c.increment("a", 22)
    return c


def pncounter() -> PNCounter:
    p = PNCounter()
    p.increment("a", 5)
    p.decrement("b", 7)
    return p


def pncounter_one_replica() -> PNCounter:
    p = PNCounter()
    p.increment("a", 10)
    p.decrement("a", 3)
    return p


def orset_mixed() -> ORSet[Atom]:
    s: ORSet[Atom] = ORSet()
    s.add("x", "a")
    s.add(42, "b")
    s.add(b"\x00\x01", "a")
    s.add(-7, "c")
    s.add("", "b")
    s.add(b"", "c")
    return s


def orset_after_remove() -> ORSet[Atom]:
    s: ORSet[Atom] = ORSet()
    s.add("x", "a")
    s.add("y", "a")
    s.add("z", "b")
    s.remove("x")
    return s


def orset_dot_cloud() -> ORSet[Atom]:
    """a's second add arrives before its first: the context has a gap."""
    source: ORSet[Atom] = ORSet()
    source.add("p", "a")  # this delta is lost
    second = source.add("q", "a")
    third = source.add("r", "a")
    out: ORSet[Atom] = ORSet()
    out.merge(third)
    out.merge(second)
    return out


def orset_add_wins() -> ORSet[Atom]:
    a: ORSet[Atom] = ORSet()
    a.add("x", "a")
    b = a.copy()
    a.remove("x")
    b.add("x", "b")
    a.merge(b)
    return a


def orset_two_dots() -> ORSet[Atom]:
    """Out-of-order delta joins leave one element two dots of one origin."""
    source: ORSet[Atom] = ORSet()
    first = source.add("x", "a")
    source.remove("x")
    again = source.add("x", "a")
    out: ORSet[Atom] = ORSet()
    out.merge(again)
    out.merge(first)
    return out


def lww() -> LWWRegister[Atom]:
    r: LWWRegister[Atom] = LWWRegister()
    r.assign("v1", "a", timestamp=1_700_000_000_000_000_000)
    return r


def lww_tie() -> LWWRegister[Atom]:
    """Equal timestamps: the larger replica id wins."""
    r: LWWRegister[Atom] = LWWRegister()
    r.assign("from-b", "b", timestamp=17)
    r.assign("from-a", "a", timestamp=17)
    return r


def lww_bytes() -> LWWRegister[Atom]:
    r: LWWRegister[Atom] = LWWRegister()
    r.assign(b"\xde\xad\xbe\xef", "a", timestamp=0)
    return r


def mv_single() -> MVRegister[Atom]:
    m: MVRegister[Atom] = MVRegister()
    m.assign("v0", "a")
    m.assign("v1", "a")
    return m


def mv_concurrent() -> MVRegister[Atom]:
    a: MVRegister[Atom] = MVRegister()
    a.assign("v0", "a")
    b = a.copy()
    a.assign("v1", "a")
    b.assign(2, "b")
    a.merge(b)
    return a


def mv_resolved() -> MVRegister[Atom]:
    m = mv_concurrent()
    m.assign(b"v3", "c")
    return m


def vclock() -> VectorClock:
    v = VectorClock()
    v.increment("a")
    v.increment("b")
    v.increment("b")
    return v


def vclock_large() -> VectorClock:
    return VectorClock({"r1": 2**64 - 1, "r0": 255, "r2": 256})


def ormap_counter() -> ORMap[Atom, GCounter]:
    m: ORMap[Atom, GCounter] = ORMap()
    m.update("a", "hits", GCounter, lambda c, me: c.increment(me, 3))
    return m


def ormap_mixed() -> ORMap[Atom, Any]:
    """Keys of every kind, values of three types, and a removed key."""
    m: ORMap[Atom, Any] = ORMap()
    m.update("a", 7, ORSet, lambda s, me: s.add("x", me))
    m.update("b", b"\x01", MVRegister, lambda r, me: r.assign("v", me))
    m.update("a", "gone", GCounter, lambda c, me: c.increment(me))
    m.remove("gone")
    m.update("c", "n", PNCounter, lambda c, me: c.decrement(me, 2))
    return m


def ormap_concurrent() -> ORMap[Atom, GCounter]:
    """Two concurrent updates of one key: two entries, joined when read."""
    a: ORMap[Atom, GCounter] = ORMap()
    b: ORMap[Atom, GCounter] = ORMap()
    a.update("a", "n", GCounter, lambda c, me: c.increment(me, 1))
    b.update("b", "n", GCounter, lambda c, me: c.increment(me, 2))
    a.merge(b)
    return a


def ormap_nested() -> ORMap[Atom, ORMap[Atom, GCounter]]:
    m: ORMap[Atom, ORMap[Atom, GCounter]] = ORMap()
    m.update(
        "a", "profile", ORMap,
        lambda p, me: p.update(me, "visits", GCounter, lambda c, me2: c.increment(me2, 5)),
    )
    return m


#: name -> (description, builder); the order is the order of the vectors file.
BUILDERS: dict[str, tuple[str, Callable[[], CRDT]]] = {
    "gcounter-empty": ("a G-Counter with no increments", GCounter),
    "gcounter-one": ("a G-Counter, a incremented by 3", gcounter_one),
    "gcounter-many": ("a G-Counter over three replicas, one non-ASCII, wide ints", gcounter_many),
    "pncounter-empty": ("a PN-Counter with no updates", PNCounter),
    "pncounter": ("a PN-Counter: a +5, b -7", pncounter),
    "pncounter-one-replica": ("a PN-Counter: a +10 then a -3", pncounter_one_replica),
    "orset-empty": ("an empty OR-Set", ORSet),
    "orset-mixed": ("an OR-Set of str, int and bytes elements from 3 replicas", orset_mixed),
    "orset-after-remove": ("an OR-Set after adds of x, y, z and a remove of x", orset_after_remove),
    "orset-dot-cloud": ("an OR-Set that got a's 2nd and 3rd adds but not its 1st", orset_dot_cloud),
    "orset-add-wins": ("an OR-Set where an add beat a concurrent remove", orset_add_wins),
    "orset-two-dots": ("an OR-Set element holding two dots of one origin", orset_two_dots),
    "lww-empty": ("an LWW-Register never written", LWWRegister),
    "lww": ("an LWW-Register written once at an explicit timestamp", lww),
    "lww-tie": ("an LWW-Register: equal timestamps, the larger replica id wins", lww_tie),
    "lww-bytes": ("an LWW-Register holding bytes at timestamp 0", lww_bytes),
    "mv-empty": ("an MV-Register never written", MVRegister),
    "mv-single": ("an MV-Register written twice by one replica", mv_single),
    "mv-concurrent": ("an MV-Register with two concurrent values", mv_concurrent),
    "mv-resolved": ("an MV-Register after a write that saw both concurrent values", mv_resolved),
    "vclock-empty": ("an empty vector clock", VectorClock),
    "vclock": ("a vector clock a:1 b:2", vclock),
    "vclock-large": ("a vector clock with 1-, 2- and 8-byte counts", vclock_large),
    "ormap-empty": ("an empty OR-Map", ORMap),
    "ormap-counter": ("an OR-Map holding one G-Counter", ormap_counter),
    "ormap-mixed": ("an OR-Map: int, bytes and str keys, three value types, a removed key",
                    ormap_mixed),
    "ormap-concurrent": ("an OR-Map key with two concurrent entries", ormap_concurrent),
    "ormap-nested": ("an OR-Map of an OR-Map of a G-Counter", ormap_nested),
}


def load_vectors() -> list[dict[str, str]]:
    vectors = json.loads(VECTORS.read_text(encoding="utf-8"))
    assert isinstance(vectors, list)
    return vectors


def render_vectors() -> str:
    vectors = [
        {"name": name, "hex": codec.encode(build()).hex(), "description": description}
        for name, (description, build) in BUILDERS.items()
    ]
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def test_the_vectors_file_lists_exactly_the_builders() -> None:
    vectors = load_vectors()
    assert [v["name"] for v in vectors] == list(BUILDERS)
    for vector in vectors:
        assert set(vector) == {"name", "hex", "description"}
        assert vector["description"] == BUILDERS[vector["name"]][0]
    assert {build().TYPE_TAG for _, build in BUILDERS.values()} == set(codec.registered())


# (An absent file fails test_the_vectors_file_lists_exactly_the_builders.)
@pytest.mark.parametrize(
    "vector", load_vectors() if VECTORS.exists() else [], ids=lambda v: v["name"]
)
def test_golden_vector(vector: dict[str, str]) -> None:
    state = BUILDERS[vector["name"]][1]()
    data = bytes.fromhex(vector["hex"])
    assert codec.encode(state).hex() == vector["hex"]
    assert codec.decode(data) == state
    assert codec.encode(codec.decode(data)) == data
    # The documented envelope: [type-tag, format-version, payload].
    tag, version, payload = cbor2.loads(data)
    assert (tag, version) == (state.TYPE_TAG, state.FORMAT_VERSION) == (tag, 1)
    assert type(payload) is list


def test_layouts_by_hand() -> None:
    """A few vectors spelled out, so a reader sees the layout each type uses."""
    hexes = {v["name"]: v["hex"] for v in load_vectors()}

    def raw(name: str) -> object:
        return cbor2.loads(bytes.fromhex(hexes[name]))

    assert hexes["gcounter-one"] == "836847436f756e7465720182616103"
    assert raw("gcounter-many") == ["GCounter", 1, ["a", 23, "b", 2**32, "é", 24]]
    assert raw("pncounter") == ["PNCounter", 1, [["a", 5], ["b", 7]]]
    # OR-Set: [context, entries]; context [replica, vv, [cloud...], ...];
    # entries [origin, [counter, element, ...], ...].
    assert raw("orset-dot-cloud") == ["ORSet", 1, [["a", 0, [2, 3]], ["a", [2, "q", 3, "r"]]]]
    assert raw("orset-after-remove") == [
        "ORSet",
        1,
        [["a", 2, [], "b", 1, []], ["a", [2, "y"], "b", [1, "z"]]],
    ]
    assert raw("orset-two-dots") == ["ORSet", 1, [["a", 2, []], ["a", [1, "x", 2, "x"]]]]
    assert raw("orset-add-wins") == ["ORSet", 1, [["a", 1, [], "b", 1, []], ["b", [1, "x"]]]]
    assert raw("lww-tie") == ["LWWRegister", 1, [17, "b", "from-b"]]
    assert raw("lww-empty") == ["LWWRegister", 1, []]
    # MV-Register: [context, [replica, counter, value, ...]].
    assert raw("mv-concurrent") == [
        "MVRegister",
        1,
        [["a", 2, [], "b", 1, []], ["a", 2, "v1", "b", 1, 2]],
    ]
    assert raw("vclock") == ["VectorClock", 1, ["a", 1, "b", 2]]
    # OR-Map: [context, [replica, counter, key, folded, tag, version, value, ...]]
    # in dot order; the value is its type's envelope spread over three items.
    assert raw("ormap-counter") == [
        "ORMap",
        1,
        [["a", 1, []], ["a", 1, "hits", ["a", 1], "GCounter", 1, ["a.1", 3]]],
    ]


def main(argv: list[str]) -> int:
    """``python -m tests.test_golden --write`` rewrites the vectors file."""
    if argv != ["--write"]:
        print(render_vectors(), end="")
        return 0
    VECTORS.parent.mkdir(exist_ok=True)
    VECTORS.write_text(render_vectors(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
