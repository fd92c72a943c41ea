"""What every :class:`~replication.transport.Transport` must do, checked: the
public conformance suite (as trio ships ``check_one_way_stream`` for streams).

Give :func:`check_transport` a factory of two started, connected endpoints
(a :class:`Connected`) and it runs every check, each on a fresh pair, and
raises :class:`TransportNonConformance` naming the first one that fails. The
checks are what a driver such as :class:`~replication.runtime.NodeRuntime`
relies on, and no more:

- both endpoints are Transports with different node ids;
- a frame arrives intact, once, named with its sender's node id, in both
  directions, for lengths 0, 1 and ``max_frame``; a thousand frames all
  arrive, exactly once each (in any order: order is not promised);
- a frame for an unknown node, or over the size limit, is dropped without
  raising, and the endpoint goes on serving;
- with nothing pending, ``receive`` returns an empty list;
- with ``on_frame`` set, frames go to it and not to ``receive``; an
  ``on_frame`` that raises :class:`~replication.transport.PeerMisbehaved`
  does not stop the endpoint (a later frame, resent until it arrives, does);
- ``close`` may be called twice, and a closed endpoint's ``send`` and
  ``receive`` do not raise; a frame to a closed endpoint is not delivered.

No check sleeps: each calls ``pump`` a bounded number of times (``pumps``),
and a transport's ``pump`` lets it make progress (advance virtual time, run
an event loop for a few milliseconds). The checks assume a network without
faults; a lossy transport should be checked with its faults off.

>>> from replication.simnet import SimulatedNetwork
>>> def connect():
...     net = SimulatedNetwork(seed=0)
...     return Connected(net.endpoint("a"), net.endpoint("b"), lambda: net.advance(1.0))
>>> check_transport(connect)
>>> sorted(CHECKS)[:2]
['both_directions', 'close']

Cost: about a dozen fresh pairs and 1 MiB plus a few thousand small frames
each way, per call.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from replication.transport import PeerMisbehaved, Transport

__all__ = ["CHECKS", "Connected", "TransportNonConformance", "check_transport"]

MIB = 1 << 20


def _nothing() -> None:
    pass


def _run_alone(work: Coroutine[Any, Any, None]) -> None:
    asyncio.run(work)


@dataclass(frozen=True)
class Connected:
    """Two started endpoints that can reach each other, and how to drive them.

    ``pump()`` lets frames move (advance virtual time; run the event loop the
    endpoints live on for a few milliseconds). ``run(coroutine)`` runs an
    endpoint's ``close`` to completion on that loop (by default in a fresh
    ``asyncio.run``, right for endpoints with no loop of their own).
    ``finish()`` is called once both endpoints are closed, to free the rest
    (the event loop, a server).

    >>> from replication.simnet import SimulatedNetwork
    >>> net = SimulatedNetwork(seed=0)
    >>> Connected(net.endpoint("a"), net.endpoint("b"), lambda: net.advance(1.0)).a.node_id
    'a'
    """

    a: Transport
    b: Transport
    pump: Callable[[], None]
    run: Callable[[Coroutine[Any, Any, None]], None] = _run_alone
    finish: Callable[[], None] = _nothing


class TransportNonConformance(AssertionError):
    """A transport broke a promise of the protocol; the message names the check.

    >>> raise TransportNonConformance("frame_lengths: a frame of 1 bytes did not arrive")
    Traceback (most recent call last):
    ...
    replication.conformance.TransportNonConformance: frame_lengths: a frame of 1 bytes ...
    """


@dataclass(slots=True)
class _Run:
    connected: Connected
    pumps: int
    max_frame: int

    def collect(self, endpoint: Transport, count: int) -> list[tuple[str, bytes]]:
        """What ``endpoint`` receives until ``count`` frames came (or the pump
        bound ran out), plus anything that turns up in one more pump: so an
        extra copy is seen, not hidden."""
        got: list[tuple[str, bytes]] = []
        for _ in range(self.pumps):
            got += endpoint.receive()
            if len(got) >= count:
                break
            self.connected.pump()
        self.connected.pump()
        got += endpoint.receive()
        return got

    def still_serving(self, source: Transport, target: Transport, frame: bytes) -> bool:
        """Send ``frame`` every pump until ``target`` receives it: a transport
        may lose frames sent while it recovers from what came before."""
        for _ in range(self.pumps):
            source.send(target.node_id, frame)
            self.connected.pump()
            if (source.node_id, frame) in target.receive():
                return True
        return False


def _expect(ok: bool, why: str) -> None:
    if not ok:
        raise TransportNonConformance(why)


def _endpoints_are_transports(run: _Run) -> None:
    a, b = run.connected.a, run.connected.b
    _expect(isinstance(a, Transport) and isinstance(b, Transport),
            "the endpoints do not implement the Transport protocol")
    _expect(a.node_id != b.node_id, f"both endpoints are named {a.node_id!r}")


def _frame_arrives_with_its_sender(run: _Run) -> None:
    a, b = run.connected.a, run.connected.b
    a.send(b.node_id, b"hello, b")
    got = run.collect(b, 1)
    _expect(got == [(a.node_id, b"hello, b")], f"sent one frame from {a.node_id!r}, got {got!r}")
    _expect(a.receive() == [], "the sender received something it did not expect")


def _both_directions(run: _Run) -> None:
    a, b = run.connected.a, run.connected.b
    b.send(a.node_id, b"hello, a")
    got = run.collect(a, 1)
    _expect(got == [(b.node_id, b"hello, a")], f"sent one frame from {b.node_id!r}, got {got!r}")


def _frame_lengths(run: _Run) -> None:
    a, b = run.connected.a, run.connected.b
    for length in (0, 1, run.max_frame):
        frame = bytes(i % 251 for i in range(length))
        a.send(b.node_id, frame)
        got = run.collect(b, 1)
        _expect(got == [(a.node_id, frame)],
                f"a frame of {length} bytes arrived as {[len(f) for _, f in got]} bytes")


def _many_frames_all_arrive_once(run: _Run) -> None:
    a, b = run.connected.a, run.connected.b
    frames = [i.to_bytes(4, "big") * (i % 7) for i in range(1000)]
    for frame in frames:
        a.send(b.node_id, frame)
    got = run.collect(b, len(frames))
    _expect({sender for sender, _ in got} <= {a.node_id}, "frames arrived under another sender")
    missing = Counter(frames) - Counter(frame for _, frame in got)
    extra = Counter(frame for _, frame in got) - Counter(frames)
    _expect(not missing and not extra,
            f"of 1000 frames {missing.total()} did not arrive and {extra.total()} were extra")


def _unknown_destination(run: _Run) -> None:
    a, b = run.connected.a, run.connected.b
    a.send("no-such-node", b"lost")
    run.connected.pump()
    a.send(b.node_id, b"still works")
    got = run.collect(b, 1)
    _expect(got == [(a.node_id, b"still works")], f"after a send to nowhere, got {got!r}")


def _oversize_frame_is_dropped(run: _Run) -> None:
    a, b = run.connected.a, run.connected.b
    a.send(b.node_id, bytes(2 * run.max_frame + 1))
    run.connected.pump()
    _expect(run.still_serving(a, b, b"after the big one"),
            "after a frame over the limit the endpoint stopped delivering")


def _receive_with_nothing_pending(run: _Run) -> None:
    b = run.connected.b
    _expect(b.receive() == [], "receive returned frames nobody sent")
    run.connected.pump()
    _expect(b.receive() == [], "receive returned frames nobody sent")


def _on_frame(run: _Run) -> None:
    a, b = run.connected.a, run.connected.b
    seen: list[tuple[str, bytes]] = []
    b.on_frame = lambda sender, frame: seen.append((sender, frame))
    a.send(b.node_id, b"to the callback")
    for _ in range(run.pumps):
        if seen:
            break
        run.connected.pump()
    run.connected.pump()
    _expect(seen == [(a.node_id, b"to the callback")], f"on_frame got {seen!r}")
    _expect(b.receive() == [], "a frame handed to on_frame was also queued for receive")


def _on_frame_refusal(run: _Run) -> None:
    a, b = run.connected.a, run.connected.b
    seen: list[bytes] = []

    def refuse_first(sender: str, frame: bytes) -> None:
        seen.append(frame)
        if len(seen) == 1:
            raise PeerMisbehaved(f"{sender!r} sent a frame the node refused")

    b.on_frame = refuse_first
    a.send(b.node_id, b"refused")
    for _ in range(run.pumps):
        if seen:
            break
        run.connected.pump()
    _expect(seen[:1] == [b"refused"], f"on_frame got {seen!r}")
    b.on_frame = None
    _expect(run.still_serving(a, b, b"later"),
            "after on_frame raised PeerMisbehaved the endpoint stopped delivering")


def _close(run: _Run) -> None:
    a, b = run.connected.a, run.connected.b
    run.connected.run(b.close())
    run.connected.run(b.close())  # twice: idempotent
    a.send(b.node_id, b"to a closed endpoint")
    for _ in range(min(run.pumps, 5)):
        run.connected.pump()
    b.send(a.node_id, b"from a closed endpoint")
    _expect(b.receive() == [], "a closed endpoint received a frame sent after it closed")
    run.connected.run(a.close())
    a.send(b.node_id, b"after close")
    a.receive()


#: Every check by name; :func:`check_transport` runs them in this order.
CHECKS: dict[str, Callable[[_Run], None]] = {
    "endpoints_are_transports": _endpoints_are_transports,
    "frame_arrives_with_its_sender": _frame_arrives_with_its_sender,
    "both_directions": _both_directions,
    "frame_lengths": _frame_lengths,
    "many_frames_all_arrive_once": _many_frames_all_arrive_once,
    "unknown_destination": _unknown_destination,
    "oversize_frame_is_dropped": _oversize_frame_is_dropped,
    "receive_with_nothing_pending": _receive_with_nothing_pending,
    "on_frame": _on_frame,
    "on_frame_refusal": _on_frame_refusal,
    "close": _close,
}


def check_transport(
    connect: Callable[[], Connected],
    *,
    max_frame: int = MIB,
    pumps: int = 100,
    only: Iterable[str] | None = None,
) -> None:
    """Run the checks (all, or those named in ``only``) each on a fresh
    ``connect()``; raise :class:`TransportNonConformance` at the first that
    fails, naming it. ``max_frame`` is the largest frame the transport
    promises to carry (a larger one must be dropped without raising);
    ``pumps`` bounds the waiting for each frame. Both endpoints are closed
    and ``finish`` called after each check, whatever its outcome.

    >>> from replication.simnet import SimulatedNetwork
    >>> def connect():
    ...     net = SimulatedNetwork(seed=0)
    ...     return Connected(net.endpoint("a"), net.endpoint("b"), lambda: net.advance(1.0))
    >>> check_transport(connect, only=["on_frame", "close"])
    >>> check_transport(connect, only=["no_such_check"])
    Traceback (most recent call last):
    ...
    ValueError: no such checks: ['no_such_check']

    Cost: see the module docstring.
    """
    names = list(CHECKS) if only is None else list(only)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise ValueError(f"no such checks: {unknown!r}")
    if max_frame < 1 or pumps < 1:
        raise ValueError(f"max_frame and pumps are positive, got {max_frame!r}, {pumps!r}")
    for name in names:
        connected = connect()
        try:
            CHECKS[name](_Run(connected, pumps, max_frame))
        except TransportNonConformance as exc:
            raise TransportNonConformance(f"{name}: {exc}") from None
        except Exception as exc:  # a promise broken by raising
            raise TransportNonConformance(f"{name}: raised {exc!r}") from exc
        finally:
            try:
                connected.run(connected.a.close())
                connected.run(connected.b.close())
            finally:
                connected.finish()
