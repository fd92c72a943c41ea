"""What every :class:`~replication.transport.Transport` must do, as trio's
``check_one_way_stream`` does for streams.

:class:`TransportConformance` holds the checks; a transport runs them by
subclassing it (as ``Test...``) and implementing :meth:`~TransportConformance.connect`,
which returns two connected endpoints and a ``pump`` that lets the transport
make progress (advance virtual time; run an event loop for a moment). The
checks pump a bounded number of times, never sleep, and assume no faults.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from replication.simnet import SimulatedNetwork
from replication.transport import Transport

MAX_PUMPS = 100
MIB = 1 << 20


@dataclass(frozen=True)
class Connected:
    """Two endpoints that can reach each other, and how to let frames move."""

    a: Transport
    b: Transport
    pump: Callable[[], None]


def collect(connected: Connected, endpoint: Transport, count: int) -> list[tuple[str, bytes]]:
    """What ``endpoint`` receives until ``count`` frames came (or the pump
    bound ran out), plus anything that turns up in one more pump: so an extra
    copy is seen, not hidden."""
    got: list[tuple[str, bytes]] = []
    for _ in range(MAX_PUMPS):
        got += endpoint.receive()
        if len(got) >= count:
            break
        connected.pump()
    connected.pump()
    got += endpoint.receive()
    return got


class TransportConformance:
    """The checks; subclass as ``Test<Transport>`` and implement :meth:`connect`."""

    def connect(self) -> Connected:
        raise NotImplementedError

    def test_endpoints_are_transports(self) -> None:
        connected = self.connect()
        assert isinstance(connected.a, Transport) and isinstance(connected.b, Transport)
        assert connected.a.node_id != connected.b.node_id

    def test_frame_arrives_intact_with_its_sender(self) -> None:
        connected = self.connect()
        connected.a.send(connected.b.node_id, b"hello, b")
        assert collect(connected, connected.b, 1) == [(connected.a.node_id, b"hello, b")]
        assert connected.a.receive() == []

    def test_both_directions(self) -> None:
        connected = self.connect()
        connected.b.send(connected.a.node_id, b"hello, a")
        assert collect(connected, connected.a, 1) == [(connected.b.node_id, b"hello, a")]

    @pytest.mark.parametrize("length", [0, 1, MIB])
    def test_frame_lengths(self, length: int) -> None:
        connected = self.connect()
        frame = bytes(i % 251 for i in range(length))
        connected.a.send(connected.b.node_id, frame)
        assert collect(connected, connected.b, 1) == [(connected.a.node_id, frame)]

    def test_many_frames_all_arrive_once(self) -> None:
        connected = self.connect()
        frames = [i.to_bytes(4, "big") * (i % 7) for i in range(1000)]
        for frame in frames:
            connected.a.send(connected.b.node_id, frame)
        got = collect(connected, connected.b, len(frames))
        assert {sender for sender, _ in got} == {connected.a.node_id}
        assert Counter(frame for _, frame in got) == Counter(frames)

    def test_send_to_unknown_destination_does_not_raise(self) -> None:
        connected = self.connect()
        connected.a.send("no-such-node", b"lost")
        connected.pump()
        connected.a.send(connected.b.node_id, b"still works")
        assert collect(connected, connected.b, 1) == [(connected.a.node_id, b"still works")]

    def test_receive_with_nothing_pending_returns_empty(self) -> None:
        connected = self.connect()
        assert connected.b.receive() == []
        connected.pump()
        assert connected.b.receive() == []


class TestSimulatedNetwork(TransportConformance):
    def connect(self) -> Connected:
        net = SimulatedNetwork(seed=0)
        return Connected(net.endpoint("a"), net.endpoint("b"), lambda: net.advance(1.0))
