"""Membership (``replication.membership``): the member lattice's laws, its
frames under hostile input, and clusters that change in simulation: a node
joins a running 3-node cluster through one seed, a node leaves and the others
stop gossiping to it, a crashed node is marked unreachable and, once downed,
removed everywhere; a restarted node replaces its old incarnation; auto-down;
tombstones bounded."""

from __future__ import annotations

import contextlib
import os
import unittest
from random import Random

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from crdts import GCounter, ORSet
from crdts.errors import DecodeError, InvalidOperation
from replication.history import converged
from replication.membership import (
    MAX_MEMBERS,
    Heartbeat,
    Member,
    MemberEvent,
    MemberNode,
    MemberSet,
    Membership,
    MembershipSettings,
    State,
    Status,
    encode,
    is_membership_frame,
    parse,
)
from replication.replicator import Replicator
from replication.simnet import Faults, SimulatedNetwork
from replication.testing import convergence_machine

# -- the lattice -------------------------------------------------------------------------

_IDS = ["a", "b", "c~1", "c~2"]
_SEEN = [frozenset(x for i, x in enumerate(_IDS) if bits >> i & 1) for bits in range(16)]
# Every record over a few ids, drawn in one choice each (cheap under the ci profile).
_RECORDS = [
    Member(member, address, status, seen)
    for member in _IDS
    for address in ("h:1", "h:2")
    for status in Status
    for seen in (_SEEN if status in (Status.JOINING, Status.LEAVING, Status.EXITING,
                                     Status.DOWN) else [frozenset()])
]
records = st.sampled_from(_RECORDS)
states = st.lists(records, max_size=6).map(MemberSet)


def _joined(*parts: MemberSet) -> MemberSet:
    out = MemberSet()
    for part in parts:
        out.merge(part)
    return out


@given(states, states)
def test_merge_commutes(x: MemberSet, y: MemberSet) -> None:
    assert _joined(x, y) == _joined(y, x)


@given(states, states, states)
def test_merge_associates(x: MemberSet, y: MemberSet, z: MemberSet) -> None:
    left = _joined(_joined(x, y), z)
    right = _joined(x, _joined(y, z))
    assert left == right


@given(states, states)
def test_merge_is_idempotent_and_inflates(x: MemberSet, y: MemberSet) -> None:
    assert _joined(x, x) == x
    both = _joined(x, y)
    for record in x:
        held = both.get(record.member)
        assert held is not None and held.join(record) == held  # record <= held
    assert _joined(both, y) == both


@given(states)
def test_state_round_trips_through_its_frame(x: MemberSet) -> None:
    message = parse(encode(State("a", True, x)))
    assert isinstance(message, State) and message.members == x and message.reply


def test_removed_is_final() -> None:
    gone = Member("a", "h:1", Status.REMOVED)
    for status in Status:
        assert gone.join(Member("a", "h:1", status)).status == Status.REMOVED


# -- frames under hostile input ------------------------------------------------------------


@given(st.binary(max_size=200))
def test_random_bytes_raise_decode_error_only(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse(data)


@given(st.data())
def test_mutated_frames_raise_decode_error_or_parse(data: st.DataObject) -> None:
    frame = bytearray(encode(State("a", False, data.draw(states))))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] ^= 1 << data.draw(st.integers(0, 7))
    cut = data.draw(st.integers(1, len(frame)))
    with contextlib.suppress(DecodeError):
        parse(bytes(frame[:cut]))


def _members(count: int) -> MemberSet:
    return MemberSet(Member(f"m{i}", "h:1", Status.UP) for i in range(count))


def test_bad_frames_change_nothing() -> None:
    m = Membership("a", "a", rng=Random(1))
    m.tick(0.0)
    before = m.state
    evil = MemberSet([Member("z", "h:9", Status.UP)])
    cases = [
        (b"", "malformed"),
        (encode(State("b", False, evil))[:-1], "malformed"),  # truncated
        (encode(State("c", False, evil)), "refused"),  # names another node than "b"
        (encode(Heartbeat("b", b"short")), "malformed"),
        (encode(State("b", False, _members(MAX_MEMBERS))), "refused"),  # over MAX_MEMBERS
    ]
    for frame, counter in cases:
        taken = getattr(m.stats, counter)
        assert m.receive(1.0, "b", frame) == []
        assert getattr(m.stats, counter) == taken + 1
        assert m.state == before
    with pytest.raises(DecodeError):
        parse(encode(State("b", False, _members(MAX_MEMBERS + 1))))
    with pytest.raises(DecodeError, match="only a transitional"):
        Member.from_payload(["x", "h:1", int(Status.UP), ["y"]])
    with pytest.raises(DecodeError, match="status"):
        Member.from_payload(["x", "h:1", 9, []])
    assert is_membership_frame(encode(Heartbeat("a", bytes(16))))


# -- clusters in simulation ---------------------------------------------------------------


def _node(name: str, seeds: list[str], peers: list[str] = (),  # type: ignore[assignment]
          settings: MembershipSettings | None = None, incarnation: int = 0,
          *, prune_after: float = 300.0) -> MemberNode:
    replica = Replicator(name, peers, rng=Random(f"{name}/{incarnation}"), incarnation=incarnation,
                         prune_after=prune_after)
    member = Membership(replica.replica_id, name, seeds=seeds, rng=Random(f"m/{name}"),
                        settings=settings)
    return MemberNode(replica, member)


def _view(node: MemberNode) -> list[tuple[str, str]]:
    return [(m.member, m.status.name) for m in node.membership.members]


def _replica(net: SimulatedNetwork, name: str) -> Replicator:
    node = net.node(name)
    assert isinstance(node, MemberNode) and isinstance(node.replica, Replicator)
    return node.replica


def _cluster(seed: int = 1, faults: Faults | None = None,
             settings: MembershipSettings | None = None,
             prune_after: float = 300.0) -> SimulatedNetwork:
    """Three nodes on a static peer list (their seeds too), up and running."""
    net = SimulatedNetwork(seed=seed, faults=faults)
    for name in "abc":
        others = [p for p in "abc" if p != name]
        net.add(_node(name, others, others, settings, prune_after=prune_after))
    for name in "abc":
        _replica(net, name).update("hits", GCounter, lambda c, me: c.increment(me, 1))
    net.run_rounds(6)
    return net


def _nodes(net: SimulatedNetwork, names: str) -> list[MemberNode]:
    out = []
    for name in names:
        node = net.node(name)
        assert isinstance(node, MemberNode)
        out.append(node)
    return out


def test_a_node_joins_a_running_cluster_through_one_seed_and_converges() -> None:
    net = _cluster(faults=Faults(loss=0.1, duplication=0.05, reorder=True))
    assert all(_view(n) == [("a", "UP"), ("b", "UP"), ("c", "UP")] for n in _nodes(net, "abc"))
    net.add(_node("d", ["b"]))  # knows one seed only, and no peer
    _replica(net, "d").update("set", ORSet, lambda s, me: s.add("from-d", me))
    nodes = _nodes(net, "abcd")
    replicas = [_replica(net, n) for n in "abcd"]
    took = net.run_until(
        lambda: converged(replicas)
        and all(_view(n) == [(x, "UP") for x in "abcd"] for n in nodes),
        40,
    )
    assert took is not None, [_view(n) for n in nodes]
    assert replicas[3].get("hits").value == 3  # type: ignore[union-attr]
    assert replicas[0].get("set").value == {"from-d"}  # type: ignore[union-attr]
    assert all(r.peers == sorted(set("abcd") - {r.node_id}) for r in replicas)


def test_a_node_leaves_and_the_others_stop_gossiping_to_it() -> None:
    net = SimulatedNetwork(seed=2, trace=True)
    for name, seeds in (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["a"])):
        net.add(_node(name, seeds))
    net.run_rounds(5)
    d = _replica(net, "d")
    d.update("hits", GCounter, lambda c, me: c.increment(me, 7))  # only d holds it
    leaving = _nodes(net, "d")[0].membership
    assert leaving.leave() and not leaving.leave()
    events: list[MemberEvent] = []
    _nodes(net, "a")[0].membership.subscribe(events.append)
    took = net.run_until(lambda: leaving.status == Status.REMOVED, 20)
    assert took is not None, _view(_nodes(net, "d")[0])
    net.run_rounds(3)
    rest = _nodes(net, "abc")
    assert all(_view(n) == [(x, "UP") for x in "abc"] for n in rest)
    assert all("d" in n.membership.removed for n in rest)
    assert [(e.kind, e.member.member) for e in events if e.member.member == "d"] == [
        ("leaving", "d"), ("exiting", "d"), ("removed", "d")]
    assert all(_replica(net, n).peers == sorted(set("abc") - {n}) for n in "abc")
    # Its operation lives on: it was handed off before it exited.
    assert all(_replica(net, n).get("hits").value == 7 for n in "abc")  # type: ignore[union-attr]
    assert net.trace is not None
    net.trace.clear()
    net.run_rounds(10)
    assert not [e for e in net.trace if e.kind == "send" and e.destination == "d"]
    assert not [e for e in net.trace if e.kind == "send" and e.source == "d"]


def test_a_crashed_node_is_unreachable_and_once_downed_removed_everywhere() -> None:
    net = _cluster(seed=3, faults=Faults(loss=0.2))
    net.crash("c")
    a, b = _nodes(net, "ab")
    took = net.run_until(lambda: "c" in a.membership.unreachable and
                         "c" in b.membership.unreachable, 30)
    assert took is not None
    assert _view(a) == [("a", "UP"), ("b", "UP"), ("c", "UP")]  # unreachable, not gone
    assert a.membership.down("c") == ["c"]
    took = net.run_until(lambda: all("c" in n.membership.removed for n in (a, b)), 20)
    assert took is not None, [_view(a), _view(b)]
    assert _view(a) == _view(b) == [("a", "UP"), ("b", "UP")]
    assert _replica(net, "a").peers == ["b"] and _replica(net, "b").peers == ["a"]
    assert not a.membership.unreachable
    net.run_rounds(1)
    assert sorted(a.membership._digests) == ["b"]  # nothing kept of the removed node


def test_a_crashed_node_once_downed_and_removed_is_pruned_everywhere() -> None:
    net = _cluster(seed=3, faults=Faults(loss=0.2), prune_after=5.0)
    net.crash("c")
    (a,) = _nodes(net, "a")
    ra, rb = _replica(net, "a"), _replica(net, "b")
    assert net.run_until(lambda: "c" in a.membership.unreachable, 30) is not None
    assert "c" in ra.context.vv  # c's increment, under its id
    a.membership.down("c")
    took = net.run_until(
        lambda: all("c" not in r.context.vv and "c" not in r.get("hits").to_payload()  # type: ignore[union-attr]
                    for r in (ra, rb)),
        200,
    )
    assert took is not None, (ra.context.vv, rb.context.vv, ra.retired, rb.retired)
    # Folded into a live owner, never lost or counted twice.
    assert ra.get("hits").value == rb.get("hits").value == 3  # type: ignore[union-attr]
    assert converged([ra, rb])


def test_a_partitioned_node_is_reachable_again_when_it_answers() -> None:
    net = _cluster(seed=4)
    a, c = _nodes(net, "ac")
    net.partition([["a", "b"], ["c"]])
    assert net.run_until(lambda: "c" in a.membership.unreachable, 30) is not None
    assert "a" in c.membership.unreachable
    net.heal()
    assert net.run_until(lambda: not a.membership.unreachable
                         and not c.membership.unreachable, 5) is not None
    assert _view(a) == _view(c) == [("a", "UP"), ("b", "UP"), ("c", "UP")]


def test_a_restarted_node_replaces_its_old_incarnation() -> None:
    net = _cluster(seed=5)
    net.crash("b")
    net.run_rounds(2)
    net.restart(_node("b", ["a", "c"], ["a", "c"], incarnation=7))
    nodes = _nodes(net, "abc")
    want = [("a", "UP"), ("b~7", "UP"), ("c", "UP")]
    assert net.run_until(lambda: all(_view(n) == want for n in nodes), 30) is not None
    assert all("b" in n.membership.removed for n in nodes)
    assert all(_replica(net, n).peers == sorted(set("abc") - {n}) for n in "abc")


def test_auto_down_removes_an_unreachable_member_when_configured() -> None:
    net = _cluster(seed=6, settings=MembershipSettings(
        detector="timeout", timeout=3.0, jitter=1.0, auto_down_after=5.0))
    net.crash("a")
    b, c = _nodes(net, "bc")
    took = net.run_until(lambda: all("a" in n.membership.removed for n in (b, c)), 30)
    assert took is not None and took >= 8, took
    assert _view(b) == _view(c) == [("b", "UP"), ("c", "UP")]


def test_off_by_default_a_crashed_member_stays_until_downed() -> None:
    net = _cluster(seed=7)
    net.crash("a")
    net.run_rounds(40)
    b = _nodes(net, "b")[0]
    assert "a" in b.membership.unreachable and "a" not in b.membership.removed


def test_a_downed_node_that_is_alive_stops() -> None:
    net = _cluster(seed=8)
    a, c = _nodes(net, "ac")
    a.membership.down("c")
    assert net.run_until(lambda: c.membership.status == Status.REMOVED, 10) is not None
    assert c.tick(net.now) == []  # neither membership nor gossip speaks for it


def test_tombstones_are_bounded() -> None:
    settings = MembershipSettings(tombstone_ttl=10.0, max_tombstones=2)
    m = Membership("a", "a", rng=Random(1), settings=settings)
    m.tick(0.0)
    gone = MemberSet(Member(f"x{i}", "h:1", Status.REMOVED) for i in range(5))
    m.receive(1.0, "x0", encode(State("x0", False, gone)))
    m.tick(1.0)
    assert len(m.removed) == 2 and m.stats.tombstones_dropped == 3
    m.tick(12.0)
    assert not m.removed


def test_phi_detector_adapts_to_the_heartbeat_interval() -> None:
    # Heartbeats every 2 time units: silence of 4 is normal, of 20 is not.
    m = Membership("a", "a", rng=Random(1))
    m.receive(0.0, "b", encode(State("b", False, MemberSet([Member("b", "b", Status.UP)]))))
    for t in range(0, 40, 2):
        m.heard(float(t), "b")
        m.tick(float(t))
    m.tick(42.0)
    assert not m.unreachable
    m.tick(60.0)
    assert m.unreachable == {"b"}


# -- the convergence machine under membership change -------------------------------------

# A few runs by default (each one joins, leaves, downs and restarts nodes);
# CRDTKIT_MEMBERSHIP_EXAMPLES=500 runs many more.
_EXAMPLES = int(os.environ.get("CRDTKIT_MEMBERSHIP_EXAMPLES", "15"))


def _membership_case(type_name: str) -> type[unittest.TestCase]:
    case = convergence_machine(type_name, membership=True).TestCase
    case.settings = settings(max_examples=_EXAMPLES, stateful_step_count=40, deadline=None)
    return case


TestGCounterUnderMembershipChange = _membership_case("GCounter")
TestORSetUnderMembershipChange = _membership_case("ORSet")


def test_an_address_known_from_the_start_may_be_set_again_after_frames_arrived() -> None:
    # Over NATS a node's address (its request subject) is known before it
    # starts, and peers' frames may arrive before the node says it again:
    # that used to raise and stop the node (seen once in CI's five-process test).
    a = Membership("a", "crdtkit.c.requests.a", seeds=["b"], rng=Random(1))
    b = Membership("b", "crdtkit.c.requests.b", seeds=["a"], rng=Random(2))
    for destination, frame in b.tick(0.0):
        if destination == "a":
            a.receive(0.0, "b", frame)
    a.set_address("crdtkit.c.requests.a")  # the same: nothing to do
    assert a.state.get("a") is not None
    with pytest.raises(InvalidOperation):
        a.set_address("elsewhere")  # a different one, after frames: still refused
