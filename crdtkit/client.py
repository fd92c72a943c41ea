"""A client for a running node: update and read its replica from another
process, and take live snapshots, over the node's authenticated port.

>>> async def example(address, key):                       # doctest: +SKIP
...     async with await Client.connect(address, key) as node:
...         op = await node.update("cart", "ORSet", "add", "milk")
...         state = await node.get("cart")
...         return sorted(state), op.dot

``update`` returns once the node's store has committed the update; the
:class:`~replication.history.Operation` it returns can go into a ``History``
to check the cluster against the sequential specification. With
``level="majority"`` or ``"all"`` it returns once that many of the current
members hold the update, or after ``timeout`` seconds, as a
:class:`Written` that says how far it got; ``get(key, level=...)``
likewise gathers the key from that many members, as a :class:`Gathered`
(docs/consistency.md). Not reaching a level is a value, not an error.
:func:`live_snapshot` starts a Chandy-Lamport snapshot at one node and
gathers every node's part into a ``GlobalSnapshot``.

Every call raises :class:`NodeError` if the node answers with an error, and
:class:`NodeUnavailable` if the node is gone (the connection closed under
the call, or had closed before it: the node stopped or died; an update that
raises it may or may not be applied, so retry it with its request id).
:meth:`Client.connect` raises :class:`AuthenticationFailed` if the node
refused our cluster key (or its proof does not verify with ours), and
:class:`NodeUnavailable` if nothing answers at the address, the node stayed
too busy to admit us within ``Limits.handshake_timeout`` (it drops
connections early under a flood, and ``connect`` dials again until then),
or the handshake did not finish in time; a TLS failure is the
``ssl.SSLError``. Both are ``PeerError``s (docs/errors.md), as :class:`NodeError` is;
``AuthenticationFailed`` is an ``AuthError`` and ``NodeUnavailable`` a
``ConnectionError``, so code that caught those before still does.

Cost: one round trip per call.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, NamedTuple, Protocol, overload

from crdtkit import protocol
from crdts import codec
from crdts.base import CRDT, expect_list, expect_replica, expect_uint
from crdts.errors import DecodeError, PeerError
from replication.auth import AuthError
from replication.consistency import Level, Reached, check_level
from replication.dotranges import DotRanges
from replication.history import Operation
from replication.messages import Entry
from replication.tcp import KeyRefused, Limits, NotAdmitted, PeerClosed, connect
from snapshot.cut import GlobalSnapshot, LocalState, SnapshotId
from snapshot.errors import SnapshotIncomplete
from snapshot.marker import LocalRecording, assemble

__all__ = [
    "AuthenticationFailed",
    "Client",
    "Gathered",
    "MemberView",
    "NodeError",
    "NodeUnavailable",
    "Written",
    "live_snapshot",
]


class MemberView(NamedTuple):
    """One member record as a node sees it (``Client.members``)."""

    member: str  # the incarnation's replica id
    node: str
    address: str
    status: str  # "joining", "up", "leaving", "exiting", "down" or "removed"
    unreachable: bool  # in the answering node's failure detector's view


class Written(NamedTuple):
    """An update at a consistency level: the update (applied and durable at
    the node whatever ``reached`` says) and how far it spread in time
    (``reached.ok``: the level was reached; Akka's ``UpdateTimeout``
    otherwise, as a value)."""

    operation: Operation
    reached: Reached


class Gathered(NamedTuple):
    """A read at a consistency level: the state merged from what the node
    gathered (None: held nowhere it asked), and how far it got
    (``reached.ok`` false: Akka's ``GetFailure``, with what did arrive)."""

    state: CRDT | None
    reached: Reached


#: The default time a write or read waits for its level, in seconds.
DEFAULT_TIMEOUT = 5.0


class NodeError(PeerError):
    """The node refused a request, and said why (its message tells whose
    fault it was: a refused operation, a failed commit)."""


class Connection(Protocol):
    """What a client talks to a node through: a ``replication.tcp.Channel``
    (TCP), or a ``crdtkit.natsnode.NatsChannel`` (NATS request/reply)."""

    async def send(self, body: bytes, *, alone: bool = False) -> None: ...

    async def recv(self) -> bytes: ...

    def close(self) -> None: ...


class AuthenticationFailed(AuthError):
    """The node refused our cluster key: it closed the connection on our
    proof (or its own proof does not verify with our key). The two hold
    different keys; nothing was sent."""


class NodeUnavailable(PeerError, ConnectionError):
    """The node is gone or out of reach: nothing listens at its address, it
    stayed too busy to admit us, the handshake did not finish in time, or
    the connection closed (the node stopped or died). A call that raised it
    may or may not have been applied."""


#: What a connection's end looks like from the client: clean or not.
_LOST = (PeerClosed, asyncio.IncompleteReadError, OSError)


class Client:
    """An open connection to one node (use :meth:`connect`).

    Calls may run concurrently (``asyncio.gather``): they are pipelined on
    the one connection, and the node serves them concurrently (up to
    ``crdtkit.node.MAX_IN_FLIGHT`` at a time), so concurrent updates share
    the node's commits. Each call still returns its own answer.
    """

    def __init__(self, channel: Connection, *, where: str = "the node") -> None:
        self._channel = channel
        self._where = where  # for errors: "the node at 127.0.0.1:7000"
        self._lost: str | None = None  # why the connection ended, once it has
        self._requests = 0
        # Request ids: a random prefix per client and a count (os.urandom
        # per update was a system call each).
        self._prefix = os.urandom(16)
        self._ids = 0
        # Answers awaited, by request number; while any is, one of their
        # callers reads (_read_until), or the reader task (_read).
        self._waiting: dict[int, asyncio.Future[tuple[str, list[object]]]] = {}
        self._reading = False
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(
        cls,
        address: tuple[str, int],
        key: bytes,
        *,
        name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: Limits | None = None,
    ) -> Client:
        """Connect and authenticate with the cluster ``key``, within
        ``limits.handshake_timeout`` (5 s by default) in all, dialling again
        while the node drops the connection early. Raises
        AuthenticationFailed if the node refused the key, NodeUnavailable if
        no node could be reached or admitted us in time, ssl.SSLError for TLS.

        >>> async def nobody_there():
        ...     try:
        ...         await Client.connect(("127.0.0.1", 1), bytes(32))
        ...     except NodeUnavailable as exc:
        ...         print(exc)
        >>> asyncio.run(nobody_there())
        no node at 127.0.0.1:1: ...

        Cost: one handshake."""
        name = name or f"client-{os.urandom(4).hex()}"
        host, port = address
        where = f"{host}:{port}"
        try:
            channel = await connect(
                address, key, name, role="client", ssl_context=ssl_context, limits=limits
            )
        except KeyRefused as exc:
            raise AuthenticationFailed(f"the node at {where} refused our cluster key ({exc})"
                                       ) from None
        except AuthError as exc:
            raise AuthenticationFailed(f"the node at {where}: {exc}") from None
        except NotAdmitted as exc:
            raise NodeUnavailable(f"the node at {where} is too busy: it dropped every attempt "
                                  f"to connect ({exc})") from exc
        except ssl.SSLError:
            raise
        except TimeoutError as exc:
            raise NodeUnavailable(f"the node at {where} did not finish the handshake in time"
                                  ) from exc
        except OSError as exc:
            raise NodeUnavailable(f"no node at {where}: {exc}") from exc
        return cls(channel, where=f"the node at {where}")

    @classmethod
    async def over_nats(
        cls,
        node: str,
        key: bytes,
        *,
        servers: Sequence[str],
        cluster: str,
        options: Mapping[str, Any] | None = None,
    ) -> Client:
        """A client of node ``node`` of the NATS cluster ``cluster``, through
        the NATS ``servers`` (``options`` go to ``nats.connect``: TLS,
        credentials). Requests are sealed with the cluster ``key``; a node
        that refuses them raises ``crdtkit.natsnode.RequestRefused``, and
        ``NodeUnreachable`` if no node listens under that name.
        Cost: a NATS connection."""
        from crdtkit.natsnode import NatsChannel

        channel = await NatsChannel.open(node, key, servers=servers, cluster=cluster,
                                         options=options)
        return cls(channel, where=f"node {node} of NATS cluster {cluster}")

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; a call still waiting raises
        NodeUnavailable. Cost: O(1)."""
        if self._lost is None:
            self._lost = f"the connection to {self._where} was closed by this client"
        self._channel.close()
        if self._reader is not None:
            self._reader.cancel()

    def _gone(self, exc: BaseException) -> NodeUnavailable:
        if self._lost is None:
            what = "did not answer in time" if isinstance(exc, TimeoutError) else (
                "closed the connection: it stopped or went away")
            self._lost = f"{self._where} {what}"
        return NodeUnavailable(self._lost)

    async def _call(self, kind: str, *fields: object) -> list[object]:
        if self._lost is not None:
            raise NodeUnavailable(self._lost)
        self._requests += 1
        request = self._requests
        waiter: asyncio.Future[tuple[str, list[object]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting[request] = waiter
        try:
            try:
                # Alone: no other call waits, so no other request follows
                # in this turn of the loop to share its write.
                await self._channel.send(protocol.encode(kind, request, *fields),
                                         alone=len(self._waiting) == 1)
            except _LOST as exc:
                raise self._gone(exc) from exc
            if not self._reading and not waiter.done():
                await self._read_until(waiter)
            answer, out = await waiter
        finally:
            self._waiting.pop(request, None)
        if answer == "error":
            raise NodeError(str(out[0]))
        return out

    async def _read_until(self, waiter: asyncio.Future[tuple[str, list[object]]]) -> None:
        # A caller that finds no one reading reads itself, handing each
        # answer to its caller, until its own has come; then, if other calls
        # still wait, a reader task takes over. A client that waits for each
        # answer so reads with no task and wakes no one: a task that woke the
        # caller a turn of the event loop after reading its answer cost a
        # sequential round trip about a tenth of the client's CPU.
        self._reading = True
        try:
            while not waiter.done():
                self._take(await self._recv())
        except asyncio.CancelledError:  # our caller gave up; the others go on
            raise
        except Exception as exc:
            self._fail(exc)
        finally:
            # Reading passes to the task at once: a call made before the
            # task first runs must not start reading too.
            self._reading = any(w is not waiter and not w.done() for w in self._waiting.values())
            if self._reading:
                self._reader = asyncio.create_task(self._read())

    async def _recv(self) -> bytes:
        # An idle connection's read timing out is no error while no call
        # waits; a call waiting, it is.
        while True:
            try:
                return await self._channel.recv()
            except TimeoutError:
                if any(not w.done() for w in self._waiting.values()):
                    raise

    def _take(self, data: bytes) -> None:
        answer, number, out = protocol.parse(data)
        waiter = self._waiting.pop(number, None)
        if waiter is None:
            if number > self._requests:
                raise DecodeError(f"an answer to request {number}, never sent")
            return  # its caller gave up waiting (cancelled)
        if not waiter.done():
            waiter.set_result((answer, out))

    def _fail(self, exc: Exception) -> None:
        # The transport's and the protocol's errors go to every caller waiting.
        error = self._gone(exc) if isinstance(exc, _LOST) else exc
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(error)
        self._waiting.clear()

    async def _read(self) -> None:
        # Reads for the calls that wait while none reads itself (see
        # _read_until), until none waits; _reading is set from its creation.
        try:
            while any(not w.done() for w in self._waiting.values()):
                self._take(await self._recv())
        except asyncio.CancelledError:  # closed
            for waiter in self._waiting.values():
                waiter.cancel()
            self._waiting.clear()
            raise
        except Exception as exc:
            self._fail(exc)
        finally:
            self._reading = False
            self._reader = None

    @overload
    async def update(
        self, key: str, type_name: str, kind: str, *args: Any, request_id: bytes | None = None,
        level: Literal["local"] = "local", timeout: float = DEFAULT_TIMEOUT,
    ) -> Operation: ...

    @overload
    async def update(
        self, key: str, type_name: str, kind: str, *args: Any, request_id: bytes | None = None,
        level: Literal["majority", "all"], timeout: float = DEFAULT_TIMEOUT,
    ) -> Written: ...

    async def update(
        self, key: str, type_name: str, kind: str, *args: Any, request_id: bytes | None = None,
        level: Level = "local", timeout: float = DEFAULT_TIMEOUT,
    ) -> Operation | Written:
        """Apply an operation of a type registered with ``crdts.codec`` at
        the node (for example ``update("hits", "GCounter", "increment", 2)``);
        returns it as logged, once the node's store committed it. Its
        arguments are checked here first, by the type's operation table
        (``crdts.operations``): InvalidOperation, and nothing is sent.

        ``request_id`` (1 to 64 bytes; a fresh unique one if not given) makes
        a retry safe: calling again with the same id, on this connection or
        another, before or after the node restarted, returns the same
        operation and applies it once. Raises NodeError if the node refused
        the update or could not commit it ("not applied": nothing of it is
        visible anywhere, and a retry with the same id may apply it).

        ``level`` ``"majority"`` or ``"all"``: it returns, as a
        :class:`Written`, once that many of the node's current members hold
        the update, or after ``timeout`` seconds (up to 600) with what was
        reached; the update is durable at the node either way and spreads
        on by gossip.

        The operation's delta and observed ranges are kept as the node
        answered them until read: ``op.delta`` and ``op.observed`` decode
        them then (DecodeError if the node sent something that does not
        decode), so logging updates costs no decoding.

        Cost: a round trip and the node's commit (and, with a level, the
        node's push to the members and their acknowledgements)."""
        items = list(protocol.operations(type_name)[1].validate(kind, args))
        if request_id is None:
            self._ids += 1
            request_id = self._prefix + self._ids.to_bytes(8, "big")
        fields: list[object] = [key, type_name, kind, items, request_id]
        if level != "local":
            fields += [check_level(level), _milliseconds(timeout)]
        out = await self._call("update", *fields)
        replica, counter, observed, delta = out[:4]
        if type(delta) is not bytes:
            raise DecodeError("an update's delta is bytes")
        dot = (expect_replica(replica, "dot"), expect_uint(counter, "dot", 1))
        if type(observed) is not list:
            raise DecodeError("an update's observed ranges are a list")
        # The delta and the observed ranges stay as answered until read
        # (Operation decodes and checks them then): a client that only logs
        # its updates never decodes them.
        op = Operation(key, type_name, kind, tuple(items), dot, observed, delta)
        if level == "local":
            return op
        if len(out) != 5:
            raise DecodeError("an update at a level is answered with how far it spread")
        return Written(op, Reached.from_payload(out[4]))

    @overload
    async def get(self, key: str, *, level: Literal["local"] = "local",
                  timeout: float = DEFAULT_TIMEOUT) -> CRDT | None: ...

    @overload
    async def get(self, key: str, *, level: Literal["majority", "all"],
                  timeout: float = DEFAULT_TIMEOUT) -> Gathered: ...

    async def get(self, key: str, *, level: Level = "local", timeout: float = DEFAULT_TIMEOUT
                  ) -> CRDT | Gathered | None:
        """A copy of the state under ``key`` at the node, or None.

        ``level`` ``"majority"`` or ``"all"``: the node first gathers the
        key's state from that many of its current members (waiting at most
        ``timeout`` seconds) and merges it into its own; returns a
        :class:`Gathered` with the merged state and how far it got.

        Cost: a round trip and the state's size (with a level, plus one
        round trip from the node to each member)."""
        if level == "local":
            entry = await self.entry(key)
            return None if entry is None else entry.state
        held, _, reached = await self._call("get", key, check_level(level), _milliseconds(timeout))
        if held is not None and type(held) is not bytes:
            raise DecodeError("a state is bytes")
        return Gathered(None if held is None else codec.decode(held), Reached.from_payload(reached))

    async def entry(self, key: str) -> Entry | None:
        """The state under ``key`` at the node with the dots of the operations
        it reflects, or None. Cost: a round trip and the state's size."""
        held, dots = await self._call("get", key)
        if held is None:
            return None
        if type(held) is not bytes:
            raise DecodeError("a state is bytes")
        return Entry(key, codec.decode(held), DotRanges.from_payload(dots, "dots"))

    async def keyspace(self) -> bytes:
        """The node's whole keyspace as canonical CBOR (equal keyspaces, equal
        bytes). Cost: a round trip and the keyspace's size."""
        (data,) = await self._call("keyspace")
        if type(data) is not bytes:
            raise DecodeError("a keyspace is bytes")
        return data

    async def stats(self) -> dict[str, int]:
        """The node's counters (updates, merged, frames and bytes sent and
        received, refusals). Cost: a round trip."""
        (flat,) = await self._call("stats")
        items = expect_list(flat, "stats")
        names, counts = items[0::2], items[1::2]
        if len(names) != len(counts) or not all(type(n) is str for n in names):
            raise DecodeError("stats are [name, count] pairs")
        return {str(n): expect_uint(c, "count") for n, c in zip(names, counts, strict=True)}

    async def members(self) -> list[MemberView]:
        """Every member record the node holds, removed ones included (while
        their tombstones last), sorted by member id. Cost: a round trip."""
        (rows,) = await self._call("members")
        out = []
        for row in expect_list(rows, "members"):
            fields = expect_list(row, "member")
            if len(fields) != 5 or not all(type(f) is str for f in fields[:4]) \
                    or type(fields[4]) is not bool:
                raise DecodeError("a member is [member, node, address, status, unreachable]")
            out.append(MemberView(*fields))  # type: ignore[arg-type]
        return out

    async def leave(self) -> str:
        """Make the node leave the cluster gracefully (it hands its data to a
        peer, is removed, and stops); its status now. Cost: a round trip."""
        (status,) = await self._call("leave")
        if type(status) is not str:
            raise DecodeError("a status is a str")
        return status

    async def down(self, node: str) -> list[str]:
        """Down ``node`` (a node id, or one member id): an operator's decision
        that it is gone for good; the members downed (none: no such live
        member). Cost: a round trip."""
        (downed,) = await self._call("down", node)
        items = expect_list(downed, "downed")
        if not all(type(m) is str for m in items):
            raise DecodeError("members downed are strs")
        return [str(m) for m in items]

    async def snapshot(self) -> SnapshotId:
        """Start a Chandy-Lamport snapshot at this node. Cost: a round trip."""
        initiator, number = await self._call("snapshot")
        return SnapshotId(expect_replica(initiator, "initiator"), expect_uint(number, "n", 1))

    async def recording(self, snapshot: SnapshotId) -> LocalRecording | None:
        """This node's part of ``snapshot`` (its state, and the frames in
        flight to it by source), or None while incomplete. Cost: a round trip."""
        (part,) = await self._call("recording", *snapshot)
        if part is None:
            return None
        state, channels = expect_list(part, "recording")
        if type(state) is not bytes:
            raise DecodeError("a recorded state is bytes")
        frames: dict[str, tuple[bytes, ...]] = {}
        for item in expect_list(channels, "channels"):
            source, held = expect_list(item, "channel")
            listed = expect_list(held, "frames")
            if not all(type(f) is bytes for f in listed):
                raise DecodeError("frames are bytes")
            frames[expect_replica(source, "source")] = tuple(listed)  # type: ignore[arg-type]
        return LocalRecording(LocalState.from_bytes(state), frames)


def _milliseconds(timeout: float) -> int:
    if not 0 <= timeout <= 600:
        raise ValueError(f"a level's timeout is 0 to 600 seconds, not {timeout!r:.20}")
    return round(timeout * 1000)


async def live_snapshot(
    clients: Mapping[str, Client] | Sequence[Client],
    *,
    initiator: Client | None = None,
    timeout: float = 10.0,
    poll: float = 0.05,
) -> GlobalSnapshot:
    """A consistent cut of a running cluster: a snapshot started at
    ``initiator`` (the first client by default), every node's part gathered
    through ``clients`` (one per node). Raises SnapshotIncomplete after
    ``timeout`` seconds. Cost: a round trip per node per poll.
    """
    nodes = list(clients.values()) if isinstance(clients, Mapping) else list(clients)
    taken = await (initiator or nodes[0]).snapshot()
    parts: dict[int, LocalRecording] = {}
    for _ in range(max(1, int(timeout / poll))):
        for i, client in enumerate(nodes):
            if i not in parts and (part := await client.recording(taken)) is not None:
                parts[i] = part
        if len(parts) == len(nodes):
            break
        await asyncio.sleep(poll)
    else:
        raise SnapshotIncomplete(f"snapshot {taken} incomplete after {timeout} s")
    return assemble(taken, parts.values())
