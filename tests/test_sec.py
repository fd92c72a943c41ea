"""The SEC checker on cuts built by hand from real replicas: a converged
cluster, a deliberately inconsistent cut, divergent and non-monotone replicas,
states that disagree with the specification, entries in flight."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from hypothesis import given
from hypothesis import strategies as st

from crdts import CausalContext, GCounter, ORSet
from replication import Replicator
from replication.dotranges import DotRanges
from replication.history import History, converged
from replication.messages import Entry, Push, Reply, encode, parse
from replication.store import MemoryStore, restore
from snapshot.cut import GlobalSnapshot, LocalState, SnapshotId
from snapshot.sec import MAX_DETAILS, SECReport, Verdict, check, join_cut

NAMES = ("consistent cut", "strong convergence", "monotone", "join equals specification")
Frame = tuple[str, str, bytes]  # (source node, destination node, frame)
Channels = Mapping[tuple[str, str], tuple[bytes, ...]]


def cluster(*nodes: str, seed: int = 0) -> dict[str, Replicator]:
    rng = random.Random(seed)
    return {n: Replicator(n, nodes, rng=random.Random(rng.getrandbits(32))) for n in nodes}


def deliver(
    replicas: Mapping[str, Replicator], frames: Iterable[Frame], limit: int | None = None
) -> list[Frame]:
    """A perfect FIFO network, by hand: deliver ``frames`` and every answer,
    at most ``limit`` of them; return those left undelivered, in order."""
    queue = list(frames)
    delivered = 0
    while queue and (limit is None or delivered < limit):
        source, destination, frame = queue.pop(0)
        out = replicas[destination].receive(0.0, source, frame)
        queue += [(destination, to, f) for to, f in out]
        delivered += 1
    return queue


def gossip(replicas: Mapping[str, Replicator], node: str) -> list[Frame]:
    return [(node, to, frame) for to, frame in replicas[node].tick(0.0)]


def settle(replicas: Mapping[str, Replicator]) -> None:
    for _ in range(30):
        if converged(list(replicas.values())):
            return
        for node in replicas:
            deliver(replicas, gossip(replicas, node))
    raise AssertionError("the replicas did not converge on a perfect network")


def cut(states: Iterable[LocalState], channels: Channels | None = None) -> GlobalSnapshot:
    return GlobalSnapshot(SnapshotId("a", 1), {s.node: s for s in states}, channels or {})


def capture(replicas: Mapping[str, Replicator]) -> GlobalSnapshot:
    return cut(LocalState.capture(r) for r in replicas.values())


def verdict(report: SECReport, name: str) -> Verdict:
    return next(v for v in report.verdicts if v.name == name)


def counter(**slots: int) -> GCounter:
    out = GCounter()
    for replica, amount in slots.items():
        out.increment(replica, amount)
    return out


def dots(*pairs: tuple[str, int]) -> DotRanges:
    """A key's bookkeeping holding these operations: each writer's dots given
    here are its first operations on the key."""
    by_writer: dict[str, list[int]] = {}
    for writer, counter in pairs:
        by_writer.setdefault(writer, []).append(counter)
    return DotRanges.whole({w: (len(c), max(c)) for w, c in by_writer.items()})


def test_a_converged_cluster_passes_every_verdict() -> None:
    replicas = cluster("a", "b", "c")
    h = History()
    h.apply(replicas["a"], "hits", "GCounter", "increment", 2)
    h.apply(replicas["b"], "hits", "GCounter", "increment", 3)
    h.apply(replicas["a"], "cart", "ORSet", "add", "milk")
    h.apply(replicas["c"], "cart", "ORSet", "add", "eggs")
    h.apply(replicas["b"], "stock", "PNCounter", "decrement", 4)
    h.apply(replicas["c"], "name", "MVRegister", "assign", "x")
    h.apply(replicas["a"], "owner", "LWWRegister", "assign", "ann", None)
    settle(replicas)
    h.apply(replicas["b"], "cart", "ORSet", "remove", "milk")
    settle(replicas)

    report = check(capture(replicas), h)
    assert [v.name for v in report.verdicts] == list(NAMES)
    assert [v.passed for v in report.verdicts] == [True] * 4
    assert report.passed
    assert all(v.offenders == () and v.details == () for v in report.verdicts)
    assert join_cut(capture(replicas))["cart"].state.value == frozenset({"eggs"})  # type: ignore[attr-defined]

    unlogged = check(capture(replicas))
    assert [v.passed for v in unlogged.verdicts] == [True, True, True, None]
    assert unlogged.verdicts[3].details == ("not checked (no operation log)",)
    assert unlogged.passed


def test_a_cut_taken_at_different_moments_is_inconsistent() -> None:
    replicas = cluster("a", "b")
    h = History()
    h.apply(replicas["a"], "hits", "GCounter", "increment", 2)
    settle(replicas)
    early_a = LocalState.capture(replicas["a"])
    h.apply(replicas["a"], "hits", "GCounter", "increment", 3)  # after a was recorded
    settle(replicas)
    late_b = LocalState.capture(replicas["b"])

    report = check(cut([early_a, late_b]), h)
    consistent = verdict(report, "consistent cut")
    assert consistent.passed is False
    assert consistent.offenders == ("a", "b")
    assert consistent.details == ("b holds 1 operation of a beyond a's own cut",)
    assert not report.passed
    # The rest holds: a's state is below b's, and the join covers both increments.
    assert [v.passed for v in report.verdicts[1:]] == [True, True, True]


def test_dots_of_an_old_incarnation_have_no_owner_to_check_against() -> None:
    replicas = cluster("a", "b")
    h = History()
    h.apply(replicas["a"], "hits", "GCounter", "increment", 2)
    saved = MemoryStore.of(replicas["a"]).load()
    h.apply(replicas["a"], "hits", "GCounter", "increment", 3)
    settle(replicas)
    restarted = restore(saved, "a", ["b"], rng=random.Random(7), incarnation=1)

    report = check(cut([LocalState.capture(restarted), LocalState.capture(replicas["b"])]), h)
    assert restarted.replica_id == "a~1"
    assert report.passed, str(report)


def test_replicas_with_equal_clocks_and_different_states_fail_strong_convergence() -> None:
    replicas = cluster("a", "b", "c")
    h = History()
    h.apply(replicas["a"], "hits", "GCounter", "increment", 2)
    h.apply(replicas["b"], "cart", "ORSet", "add", "milk")
    settle(replicas)
    honest = capture(replicas)
    b = honest.states["b"]
    # Same operations, different states: a counter slot too high, a lost element.
    forged = LocalState("b", "b", tuple(
        Entry(e.key, counter(a=5) if e.key == "hits" else ORSet(), e.dots) for e in b.entries
    ))
    assert forged.clock == b.clock

    report = check(cut([honest.states["a"], forged, honest.states["c"]]), h)
    strong = verdict(report, "strong convergence")
    assert strong.passed is False
    assert strong.offenders == ("a", "b", "c")
    assert strong.details == (
        "a, b, c hold the same operations but 2 different keyspaces (a, c | b)",
    )
    assert verdict(report, "consistent cut").passed


def test_a_state_not_below_one_with_a_larger_clock_fails_monotone() -> None:
    a = Replicator("a", ["c"], rng=random.Random(1))
    h = History()
    h.apply(a, "hits", "GCounter", "increment", 3)
    h.apply(a, "cart", "ORSet", "add", "milk")
    # c claims a's increment and one of its own, but its counter lost a's slot;
    # and it claims a's add, but its set lacks the element.
    c = LocalState("c", "c", (
        Entry("cart", ORSet(), dots(("a", 2))),
        Entry("hits", counter(c=1), dots(("a", 1), ("c", 1))),
    ))
    assert LocalState.capture(a).clock.issubset(c.clock)

    report = check(cut([LocalState.capture(a), c]), h)
    monotone = verdict(report, "monotone")
    assert monotone.passed is False
    assert monotone.offenders == ("a", "c")
    assert monotone.details == (
        "a's clock is within c's, but c's 'cart' is not above a's (and 1 more key)",
    )
    # c's own increment is not logged, but its state still joins a's to 4.
    spec = verdict(report, "join equals specification")
    assert spec.details == ("'hits' joins to 4, the specification gives 3 over 1 operation",)


def test_a_logged_operation_under_another_key_fails_the_join_check() -> None:
    a = Replicator("a", [], rng=random.Random(1))
    h = History()
    h.apply(a, "hits", "GCounter", "increment", 2)
    moved = LocalState("a", "a", (Entry("other", counter(a=2), a.ops("hits")),))

    spec = verdict(check(cut([moved]), h), "join equals specification")
    assert spec.passed is False
    assert spec.offenders == ("a",)
    assert spec.details == (
        "1 operation on 'hits' is in the cut under another key, and the cut has no 'hits'",
    )


def test_a_state_that_disagrees_with_the_specification_fails_the_join_check() -> None:
    a = Replicator("a", [], rng=random.Random(1))
    h = History()
    h.apply(a, "hits", "GCounter", "increment", 2)
    wrong = LocalState("a", "a", (Entry("hits", counter(a=5), a.ops("hits")),))

    report = check(cut([wrong]), h)
    spec = verdict(report, "join equals specification")
    assert spec.passed is False
    assert spec.offenders == ("a",)
    assert spec.details == ("'hits' joins to 5, the specification gives 2 over 1 operation",)
    assert [v.passed for v in report.verdicts[:3]] == [True, True, True]


def test_an_operation_only_in_flight_is_joined() -> None:
    # a pushed its update to b, then crashed and restarted from a copy saved
    # before it: the frame in flight is the only place the increment lives.
    replicas = cluster("a", "b")
    a = replicas["a"]
    saved = MemoryStore.of(a).load()
    h = History()
    h.apply(a, "hits", "GCounter", "increment", 2)
    h.apply(a, "cart", "ORSet", "add", "milk")
    frame = encode(Push("a", "b", 0, 2, 0, 1, Reply.NOTHING, a.context,
                        LocalState.capture(a).entries))
    restarted = restore(saved, "a", ["b"], rng=random.Random(7), incarnation=1)
    states = [LocalState.capture(restarted), LocalState.capture(replicas["b"])]
    assert all(s.entries == () for s in states)

    snapshot = cut(states, {("a", "b"): (frame,)})
    assert check(snapshot, h).passed
    joined = join_cut(snapshot)
    assert joined["hits"].state.value == 2  # type: ignore[attr-defined]
    assert joined["cart"].state.value == frozenset({"milk"})  # type: ignore[attr-defined]
    # Without the channel the cut covers none of the logged operations.
    assert join_cut(cut(states)) == {}

    tampered = (Entry("hits", counter(a=9), a.ops("hits")),)
    bad = encode(Push("a", "b", 0, 2, 0, 1, Reply.NOTHING, a.context, tampered))
    spec = verdict(check(cut(states, {("a", "b"): (bad,)}), h), "join equals specification")
    assert spec.passed is False
    assert spec.offenders == ("a",)
    assert spec.details[0].startswith("'hits' joins to 9, the specification gives 2")


def test_a_real_push_in_flight_is_joined() -> None:
    replicas = cluster("a", "b")
    h = History()
    h.apply(replicas["b"], "hits", "GCounter", "increment", 1)
    settle(replicas)
    h.apply(replicas["a"], "hits", "GCounter", "increment", 2)
    h.apply(replicas["a"], "cart", "ORSet", "add", "milk")
    # One gossip exchange, holding back a's frames that carry entries to b.
    queue = gossip(replicas, "a") + gossip(replicas, "b")
    held: list[bytes] = []
    while queue:
        source, destination, frame = queue.pop(0)
        message = parse(frame)
        if source == "a" and isinstance(message, Push) and message.entries:
            held.append(frame)
            continue
        queue += deliver(replicas, [(source, destination, frame)], limit=1)
    assert held, "a pushed nothing to b"
    assert replicas["b"].get("cart") is None

    snapshot = cut(
        [LocalState.capture(r) for r in replicas.values()], {("a", "b"): tuple(held)}
    )
    report = check(snapshot, h)
    assert report.passed, str(report)
    assert join_cut(snapshot)["hits"].state.value == 3  # type: ignore[attr-defined]


def test_an_entry_of_another_type_is_an_offence_of_its_holder() -> None:
    replicas = cluster("a", "b")
    h = History()
    h.apply(replicas["a"], "hits", "GCounter", "increment", 2)
    settle(replicas)
    s = ORSet[str]()
    s.add("x", "b")
    frame = encode(Push("b", "a", 0, 1, 0, 1, Reply.NOTHING, CausalContext.from_dots([("b", 1)]),
                        (Entry("hits", s, dots(("b", 1))),)))

    snapshot = cut(capture(replicas).states.values(), {("b", "a"): (frame,)})
    spec = verdict(check(snapshot, h), "join equals specification")
    assert spec.passed is False
    assert spec.offenders == ("b",)
    assert spec.details == (
        "a frame in flight from b to a holds 'hits' as ORSet, the rest of the cut as GCounter",
    )
    # The join leaves the misfit out.
    assert join_cut(snapshot)["hits"].state.value == 2  # type: ignore[attr-defined]


def test_the_report_renders_one_line_per_verdict_and_names_offenders() -> None:
    replicas = cluster("a", "b")
    h = History()
    h.apply(replicas["a"], "hits", "GCounter", "increment", 2)
    settle(replicas)
    early_a = LocalState.capture(replicas["a"])
    h.apply(replicas["a"], "hits", "GCounter", "increment", 3)
    settle(replicas)

    text = str(check(cut([early_a, LocalState.capture(replicas["b"])])))
    assert text.splitlines() == [
        "consistent cut ............. FAILED: b holds 1 operation of a beyond a's own cut",
        "strong convergence ......... ok",
        "monotone ................... ok",
        "join equals specification .. not checked (no operation log)",
    ]


def test_details_are_capped_and_the_rest_counted() -> None:
    # a recorded nothing, yet twelve others hold its first operation.
    others = [LocalState(f"b{i:02d}", f"b{i:02d}", (Entry("k", counter(a=1), dots(("a", 1))),))
              for i in range(12)]
    report = check(cut([LocalState("a", "a", ()), *others]))
    consistent = verdict(report, "consistent cut")
    assert consistent.passed is False
    assert len(consistent.offenders) == 13
    assert len(consistent.details) == MAX_DETAILS + 1
    assert consistent.details[-1] == "... and 2 more"
    line = str(report).splitlines()[0]
    assert line.startswith("consistent cut ............. FAILED: b00 holds 1 operation of a")
    assert "(and 11 more; offenders: a, b00, b01, b02, b03, b04, b05, b06, ... (13 in all))" in line


# Each operation is (key, type, kind, args); a key never changes type.
OPERATIONS: list[tuple[str, str, str, tuple[object, ...]]] = [
    ("hits", "GCounter", "increment", (2,)),
    ("hits", "GCounter", "increment", (0,)),
    ("stock", "PNCounter", "decrement", (1,)),
    ("stock", "PNCounter", "increment", (3,)),
    ("cart", "ORSet", "add", ("x",)),
    ("cart", "ORSet", "add", ("y",)),
    ("cart", "ORSet", "remove", ("x",)),
    ("name", "MVRegister", "assign", ("v",)),
    ("name", "MVRegister", "assign", ("w",)),
    ("owner", "LWWRegister", "assign", ("ann", None)),
    ("owner", "LWWRegister", "assign", ("bob", 3)),
]
STEPS = st.lists(
    st.tuples(st.sampled_from(["update", "gossip"]), st.integers(0, 2), st.integers(0, 12)),
    max_size=40,
)


@given(STEPS)
def test_a_simultaneous_cut_is_consistent_monotone_and_joins_to_the_specification(
    steps: list[tuple[str, int, int]],
) -> None:
    replicas = cluster("n0", "n1", "n2", seed=len(steps))
    nodes = sorted(replicas)
    h = History()
    in_flight: list[Frame] = []  # sent, not yet received: FIFO across the whole network
    for kind, who, n in steps:
        node = nodes[who]
        if kind == "update":
            key, type_name, op, args = OPERATIONS[n % len(OPERATIONS)]
            h.apply(replicas[node], key, type_name, op, *args)
        else:
            # A partial exchange: n frames get through, the rest stay in flight.
            in_flight = deliver(replicas, in_flight + gossip(replicas, node), limit=n)
    channels: dict[tuple[str, str], tuple[bytes, ...]] = {}
    for source, destination, frame in in_flight:
        channels[(source, destination)] = (*channels.get((source, destination), ()), frame)
    snapshot = cut([LocalState.capture(replicas[n]) for n in nodes], channels)

    report = check(snapshot, h)
    assert report.passed, f"{report}\n{[v.details for v in report.verdicts]}"
    assert [v.passed for v in report.verdicts] == [True, True, True, True]
