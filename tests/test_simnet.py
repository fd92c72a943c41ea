"""The simulated network: delivery, each fault, accounting and determinism,
checked with tiny fake nodes (the replicator is tested on top of it elsewhere)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from replication.simnet import Faults, SimulatedNetwork
from replication.transport import Node, Outgoing


class Flood:
    """Sends ``per_peer`` numbered frames to every peer on each tick; logs
    everything it hears."""

    def __init__(self, node_id: str, peers: list[str], per_peer: int = 1) -> None:
        self.node_id = node_id
        self.peers = [p for p in peers if p != node_id]
        self.per_peer = per_peer
        self.sent = 0
        self.ticks: list[float] = []
        self.heard: list[tuple[float, str, bytes]] = []
        self.refusals = 0  # it refuses nothing

    def tick(self, now: float) -> list[Outgoing]:
        self.ticks.append(now)
        out: list[Outgoing] = []
        for peer in self.peers:
            for _ in range(self.per_peer):
                out.append((peer, f"{self.node_id}>{peer}#{self.sent}".encode()))
                self.sent += 1
        return out

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        self.heard.append((now, sender, frame))
        return []


class Echo(Flood):
    """Answers every ``ping`` with a ``pong``."""

    def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
        super().receive(now, sender, frame)
        return [(sender, b"pong:" + frame)] if not frame.startswith(b"pong:") else []


def flood_net(
    seed: int | random.Random,
    faults: Faults | None = None,
    n: int = 4,
    per_peer: int = 1,
    *,
    trace: bool = False,
) -> tuple[SimulatedNetwork, list[Flood]]:
    net = SimulatedNetwork(seed, faults, trace=trace)
    ids = [f"n{i}" for i in range(n)]
    nodes = [Flood(i, ids, per_peer) for i in ids]
    for node in nodes:
        net.add(node)
    return net, nodes


def sequence_numbers(node: Flood, sender: str) -> list[int]:
    return [int(frame.split(b"#")[1]) for _, s, frame in node.heard if s == sender]


def assert_accounting(net: SimulatedNetwork) -> None:
    s = net.stats
    assert s.sent + s.duplicated == s.delivered + s.dropped + net.in_flight
    assert sum(s.bytes_sent_per_round) <= s.bytes_sent
    assert len(s.bytes_sent_per_round) == s.rounds


def test_fake_nodes_are_nodes() -> None:
    assert isinstance(Flood("a", []), Node)


def test_without_faults_every_frame_arrives_once_intact() -> None:
    net, nodes = flood_net(seed=1, per_peer=3)
    net.run_rounds(5)
    for node in nodes:
        frames = [frame for _, _, frame in node.heard]
        assert len(frames) == len(set(frames)) == 3 * 5 * 3
        for _, sender, frame in node.heard:
            assert frame.startswith(f"{sender}>{node.node_id}#".encode())
    s = net.stats
    assert s.sent == s.delivered == 4 * 3 * 3 * 5
    assert s.dropped == s.duplicated == net.in_flight == 0
    assert s.bytes_sent == s.bytes_delivered == sum(s.bytes_sent_per_round)
    assert s.rounds == 5 and net.now == 5.0


def test_default_delays_fit_in_the_round_so_request_reply_completes() -> None:
    net = SimulatedNetwork(seed=3)
    pinger, echo = Echo("a", ["b"]), Echo("b", [])
    net.add(pinger)
    net.add(echo)
    net.run_round()
    assert [f for _, _, f in pinger.heard] == [b"pong:a>b#0"]
    assert all(0.0 < t < 1.0 for t, _, _ in pinger.heard + echo.heard)
    assert net.in_flight == 0


def test_loss_rate_is_close_to_the_configured_probability() -> None:
    net, nodes = flood_net(seed=5, faults=Faults(loss=0.3), n=2, per_peer=5000)
    net.run_round()
    s = net.stats
    assert s.sent == 10_000
    assert 2_500 <= s.lost <= 3_500
    assert s.delivered == sum(len(n.heard) for n in nodes) == s.sent - s.lost
    assert_accounting(net)


def test_duplication_delivers_some_frames_twice_and_none_more() -> None:
    net, nodes = flood_net(seed=6, faults=Faults(duplication=0.05), n=2, per_peer=5000)
    net.run_round()
    copies = Counter(frame for n in nodes for _, _, frame in n.heard)
    assert set(copies.values()) == {1, 2}
    assert len(copies) == 10_000
    twice = sum(1 for c in copies.values() if c == 2)
    assert twice == net.stats.duplicated
    assert 300 <= twice <= 700
    assert_accounting(net)


def test_reorder_lets_later_frames_overtake() -> None:
    net, (_, b) = flood_net(seed=7, faults=Faults(reorder=True), n=2, per_peer=200)
    net.run_round()
    seen = sequence_numbers(b, "n0")
    assert sorted(seen) == list(range(200)) and seen != sorted(seen)


def test_without_reorder_channels_are_fifo_even_with_duplicates_and_long_delays() -> None:
    faults = Faults(duplication=0.2, long_delay=0.1, delay=(0.0, 0.9))
    net, (_, b) = flood_net(seed=7, faults=faults, n=2, per_peer=200)
    net.run_rounds(10)
    net.advance(10.0)  # drain what long delays hold back
    seen = sequence_numbers(b, "n0")
    assert seen == sorted(seen) and set(seen) == set(range(2000))
    assert net.stats.duplicated > 0


def test_long_delay_holds_a_frame_for_rounds() -> None:
    net = SimulatedNetwork(seed=8, faults=Faults(long_delay=1.0, long_delay_rounds=(2.0, 3.0)))
    a, b = net.endpoint("a"), net.endpoint("b")
    a.send("b", b"late")
    net.run_rounds(2)
    assert b.receive() == [] and net.in_flight == 1
    net.run_rounds(2)
    assert b.receive() == [("a", b"late")] and net.in_flight == 0


def test_partition_drops_cross_group_traffic_and_heal_restores_it() -> None:
    net, (a, b, c, d) = flood_net(seed=9)
    net.partition([["n0", "n1"], ["n2"]])  # n3 is listed nowhere: the rest, alone
    net.run_round()
    assert {s for _, s, _ in a.heard} == {"n1"}
    assert {s for _, s, _ in b.heard} == {"n0"}
    assert c.heard == d.heard == []
    assert net.stats.partitioned == 12 - 2
    net.heal()
    net.run_round()
    for node in (a, b, c, d):
        assert {s for _, s, _ in node.heard[-3:]} == set(node.peers)
    assert_accounting(net)


def test_partition_drops_frames_already_in_flight() -> None:
    net = SimulatedNetwork(seed=10, faults=Faults(long_delay=1.0))
    a, b = net.endpoint("a"), net.endpoint("b")
    a.send("b", b"x")
    net.partition([["a"], ["b"]])
    net.run_rounds(6)
    assert b.receive() == [] and net.stats.partitioned == 1 and net.in_flight == 0


def test_partition_rejects_a_node_in_two_groups() -> None:
    with pytest.raises(ValueError, match="two partition groups"):
        SimulatedNetwork(0).partition([["a", "b"], ["b"]])


def test_crashed_node_neither_ticks_nor_receives_but_its_frames_in_flight_arrive() -> None:
    net = SimulatedNetwork(seed=11, faults=Faults(long_delay=1.0))
    a, b = Flood("a", ["b"]), Flood("b", ["a"])
    net.add(a)
    net.add(b)
    net.run_round()  # both send; long delays keep both frames in flight
    net.faults = Faults()
    net.crash("a")
    assert net.is_crashed("a")
    net.run_rounds(6)
    assert a.ticks == [0.0] and a.heard == []
    assert [s for _, s, _ in b.heard] == ["a"]  # sent before the crash
    assert net.stats.unreachable == 1 + 6  # b's frame in flight, then one per round
    assert_accounting(net)


def test_restart_replaces_the_node_under_the_same_id() -> None:
    net, (a, b) = flood_net(seed=12, n=2)
    net.run_round()
    net.crash("n0")
    net.run_round()
    fresh = Flood("n0", ["n1"])
    net.restart(fresh)
    assert not net.is_crashed("n0") and net.node("n0") is fresh
    net.run_round()
    assert a.ticks == [0.0] and len(a.heard) == 1
    assert fresh.ticks == [2.0] and [s for _, s, _ in fresh.heard] == ["n1"]
    assert [s for _, s, _ in b.heard] == ["n0", "n0"]
    with pytest.raises(KeyError):
        net.restart(Flood("stranger", []))


def test_membership_errors() -> None:
    net, _ = flood_net(seed=0, n=1)
    with pytest.raises(ValueError, match="already"):
        net.add(Flood("n0", []))
    with pytest.raises(ValueError, match="belongs to a Node"):
        net.endpoint("n0")
    with pytest.raises(KeyError):
        net.node("nope")
    with pytest.raises(KeyError):
        net.crash("nope")
    assert list(net.nodes) == ["n0"]


def test_unknown_destination_is_dropped_and_counted() -> None:
    net = SimulatedNetwork(seed=0)
    net.endpoint("a").send("ghost", b"boo")
    assert net.stats.unreachable == 1 and net.in_flight == 0


def test_run_until() -> None:
    net, (_, b) = flood_net(seed=13, n=2)
    assert net.run_until(lambda: True, max_rounds=0) == 0
    assert net.run_until(lambda: len(b.heard) >= 3, max_rounds=10) == 3
    assert net.run_until(lambda: False, max_rounds=4) is None
    assert net.stats.rounds == 7
    with pytest.raises(ValueError):
        net.run_until(lambda: True, max_rounds=-1)


def test_tick_order_is_shuffled_per_round() -> None:
    order: list[str] = []

    class Logger(Flood):
        def tick(self, now: float) -> list[Outgoing]:
            order.append(self.node_id)
            return []

    net = SimulatedNetwork(seed=14)
    for i in range(5):
        net.add(Logger(f"n{i}", []))
    net.run_rounds(10)
    rounds = {tuple(order[i : i + 5]) for i in range(0, 50, 5)}
    assert len(rounds) > 1 and all(sorted(r) == [f"n{i}" for i in range(5)] for r in rounds)


def test_node_exceptions_propagate() -> None:
    class Broken(Flood):
        def receive(self, now: float, sender: str, frame: bytes) -> list[Outgoing]:
            raise RuntimeError("bug in the node")

    net = SimulatedNetwork(seed=0)
    net.add(Flood("a", ["b"]))
    net.add(Broken("b", []))
    with pytest.raises(RuntimeError, match="bug in the node"):
        net.run_round()


def test_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="loss is a probability"):
        Faults(loss=-0.1)
    with pytest.raises(ValueError, match="duplication is a probability"):
        Faults(duplication=2.0)
    with pytest.raises(ValueError, match="long_delay is a probability"):
        Faults(long_delay=float("nan"))
    with pytest.raises(ValueError, match="range"):
        Faults(delay=(0.2, 0.1))
    with pytest.raises(ValueError, match="range"):
        Faults(long_delay_rounds=(-1.0, 2.0))


def chaos_run(seed: int | random.Random) -> tuple[SimulatedNetwork, list[Flood]]:
    faults = Faults(loss=0.3, duplication=0.05, reorder=True, long_delay=0.05)
    net, nodes = flood_net(seed, faults, n=6, trace=True)
    net.run_rounds(5)
    net.partition([["n0", "n1", "n2"], ["n3", "n4"]])
    net.run_rounds(5)
    net.crash("n4")
    net.heal()
    net.run_rounds(3)
    net.restart(Flood("n4", [n.node_id for n in nodes]))
    net.faults = Faults()
    net.run_rounds(5)
    return net, nodes


def test_same_seed_same_trace_and_states() -> None:
    first, first_nodes = chaos_run(21)
    second, second_nodes = chaos_run(21)
    assert first.trace and first.trace == second.trace
    assert first.stats == second.stats
    assert [n.heard for n in first_nodes] == [n.heard for n in second_nodes]
    third, _ = chaos_run(random.Random(21))  # a generator passed in draws the same
    assert third.trace == first.trace
    kinds = Counter(event.kind for event in first.trace)
    assert set(kinds) == {"send", "deliver", "duplicate", "lost", "partitioned", "unreachable"}


def test_different_seed_different_trace() -> None:
    assert chaos_run(21)[0].trace != chaos_run(22)[0].trace


def test_stats_identity_holds_throughout_and_after_draining() -> None:
    net, _ = flood_net(seed=23, faults=Faults(loss=0.3, duplication=0.05, long_delay=0.1), n=5)
    for _ in range(20):
        net.run_round()
        assert_accounting(net)
    net.faults = Faults()
    net.heal()
    for node_id in list(net.nodes):
        net.crash(node_id)  # nobody sends any more; what is in flight is dropped
    net.advance(10.0)
    s = net.stats
    assert net.in_flight == 0
    assert s.sent == s.delivered + s.dropped - s.duplicated
    assert sum(s.bytes_sent_per_round) == s.bytes_sent
    assert s.rounds == 20
