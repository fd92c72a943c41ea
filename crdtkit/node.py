"""One replica as a process: what ``crdtkit node`` runs.

A :class:`NodeService` runs a :class:`~snapshot.marker.SnapshotNode` over the
transport its caller picks (a :class:`~crdtkit.transports.NodeTransport`:
``crdtkit.tcpnode`` for the built-in TCP runtime, ``crdtkit.natsnode`` for
NATS; the service never learns which), keeps its state in a
:class:`~replication.sqlite.SQLiteStore` in its folder, and serves clients
(``crdtkit.protocol``) through the same transport:

- On start it takes the folder's lock (a second process on the folder is
  refused), reads and verifies every row (damage refuses to start, unless
  ``repair``), and restores the replica under a fresh incarnation, the
  first start and a start on an empty or wiped folder included: it never
  issues a dot that an earlier start issued.
- Client updates are staged on copies of their keys (``Replicator.stage``),
  their keys' rows written in one transaction with the answers, and only
  once that committed applied to the replica and acknowledged. Updates that
  arrive while a transaction commits share the next one (group commit),
  staged the moment it ends. The commit runs on the store's own thread, so
  gossip and reads go on meanwhile. If it
  fails (disk full, I/O error) nothing of the batch is applied or gossiped,
  and every client in it is answered "not applied".
- A request carries an id; the answer is kept with it (the newest
  ``keep_answers`` answers, ``keep_answer_bytes`` in all), so a retried
  request is answered again, not applied twice, also after a restart.
- Requests are served concurrently and answered as they are ready (each
  answer repeats its request's number), so updates sent without waiting
  share commits (a TCP client may pipeline up to ``MAX_IN_FLIGHT`` on its
  connection).
- Keys changed by gossip are written at the end of the turn of the event
  loop that changed them (grouped with whatever else is committed, one
  commit at a time; after a failed commit, every ``flush_interval``
  seconds), and on shutdown: writing costs O(changed keys), never O(state).
  Acknowledgements to peers report only what the store holds
  (``Replicator(durable_acks=True)``), so a write at a consistency level
  survives the crash of the members it counted.
- An update whose key would encode to more than ``max_state`` bytes is
  refused before anything is written.
- Clients can start a Chandy-Lamport snapshot and fetch the node's part of it.
- Membership (``replication.membership``) runs beside the replica on the same
  transport: the node joins through the transport's seeds (addresses over
  TCP, node ids over NATS; no peer list needed) and its static peers, learns
  every member's address from the members' state, and its replica gossips
  with the members. A client can list the
  members, make the node leave, or down another node. The node stops once it
  is removed (after its leave, or downed by an operator); with
  ``leave_on_stop`` a SIGTERM makes it leave first (bounded by
  ``leave_timeout``).

Everything it logs goes to the ``crdtkit.node`` logger, one line per event.

Cost: an acknowledged update costs the encoding of its key's row and a share
of one commit (two fsyncs at most); the rest is the runtime's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from random import Random
from typing import NamedTuple, TypeVar, overload

from crdtkit import protocol
from crdtkit.transports import MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES, NodeTransport
from crdts import codec
from crdts.base import CRDT, expect_list
from crdts.errors import CrdtkitError, DecodeError, InvalidOperation
from crdts.operations import Mutator
from replication.consistency import Level, Quorum, Reached, check_level
from replication.membership import (
    MemberEvent,
    MemberNode,
    Membership,
    MembershipSettings,
    Status,
)
from replication.replicator import DurableMark, Replicator, Staged
from replication.runtime import NodeRuntime
from replication.sqlite import SQLiteStore
from replication.store import (
    KEEP_ANSWER_BYTES,
    KEEP_ANSWERS,
    AnswerWindow,
    CommitFailed,
    Stored,
    StoreDamaged,
    WriteBehind,
    encode_row,
    restore,
)
from replication.transport import Outgoing
from snapshot.cut import MAX_COLOUR, SnapshotId
from snapshot.marker import SnapshotNode

__all__ = [
    "MAX_IN_FLIGHT",
    "MAX_IN_FLIGHT_BYTES",
    "MAX_LEVEL_TIMEOUT",
    "MAX_REQUEST_ID",
    "MAX_STATE",
    "NodeService",
]

#: The largest state a key may encode to, by default.
MAX_STATE = 64 * 1024 * 1024
#: The longest request id a client may send.
MAX_REQUEST_ID = 64
#: The longest a write or read may wait for its consistency level, in ms.
MAX_LEVEL_TIMEOUT = 600_000
#: The statuses of a member counted by a consistency level: joining members
#: count once up (as in Akka), down ones no more (an operator said they are
#: gone); unreachable ones still count (docs/consistency.md).
_COUNTED = frozenset({Status.UP, Status.LEAVING, Status.EXITING})
log = logging.getLogger("crdtkit.node")
T = TypeVar("T")


@dataclass(slots=True)
class _Request:
    """An update waiting for the next commit: its arguments validated by
    ``mutator``'s table; ``reply``, the client protocol's request number and
    where its transport takes the answer's bytes; ``done``, made for
    whoever else waits (a retry while it commits, a write at a consistency
    level)."""

    key: str
    cls: type[CRDT]
    mutator: Mutator
    args: tuple[object, ...]
    request_id: bytes
    reply: tuple[int, Callable[[bytes], None]] | None = field(default=None, repr=False)
    done: asyncio.Future[_Answer] | None = field(default=None, repr=False)

    @property
    def type_name(self) -> str:
        return self.cls.TYPE_TAG

    @property
    def kind(self) -> str:
        return self.mutator.name

    def waiter(self) -> asyncio.Future[_Answer]:
        """A future of its answer. Cost: O(1)."""
        if self.done is None:
            self.done = asyncio.get_running_loop().create_future()
        return self.done


class _Answer(NamedTuple):
    """How an update ended: applied (``fields``: the answer as the store
    keeps it, ``done``: what "done" carries, if at hand, ``position``: the
    replica's log head once it was applied, 0 if not known) or not
    (``fields``: why)."""

    applied: bool
    fields: bytes
    done: list[object] | None = None
    position: int = 0


class _Commit(NamedTuple):
    """A commit handed to the store's thread: the batch, the rows and
    answers it writes (and the metadata), the staged requests with their
    answers, the keys gossip had changed that it writes too, the snapshot
    colour it records, and (when it writes every changed key) what the
    replica held, which its acks may report once it commits."""

    batch: Staged
    rows: dict[str, bytes]
    staged: list[tuple[_Request, tuple[bytes, list[object]]]]
    written: set[str]
    answers: list[tuple[bytes, bytes]]
    meta: dict[str, bytes]
    colour: int
    mark: DurableMark | None


#: What the store's thread is given: the loop to answer on, the work, and
#: what to call there with its result (or error).
_Job = tuple[
    asyncio.AbstractEventLoop, Callable[[], object], Callable[[object, BaseException | None], None]
]


class _StoreThread:
    """The store's own thread: commits (and answers read back) run there,
    off the event loop, one at a time and in order, and each result comes
    back to the loop with one ``call_soon_threadsafe``. A
    ``ThreadPoolExecutor`` (its submit, and its future chained to an asyncio
    one) cost a sequential update about a tenth of the node's CPU.

    >>> async def demo():
    ...     thread = _StoreThread("doctest-store")
    ...     try:
    ...         return await thread.run(lambda: 6 * 7)
    ...     finally:
    ...         thread.close()
    >>> asyncio.run(demo())
    42

    Cost: a queue put and a wake-up of the loop per call.
    """

    def __init__(self, name: str) -> None:
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def call(self, loop: asyncio.AbstractEventLoop, work: Callable[[], object],
             then: Callable[[object, BaseException | None], None]) -> None:
        """Run ``work`` on the thread, then ``then(result, error)`` on ``loop``."""
        self._jobs.put((loop, work, then))

    def run(self, work: Callable[[], T]) -> asyncio.Future[T]:
        """``work``'s result, from the thread. Cost: see the class."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def then(result: object, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        self.call(loop, work, then)
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, work, then = job
            try:
                result, error = work(), None
            except BaseException as exc:  # the loop's to judge
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(then, result, error)

    def close(self) -> None:
        """Finish the jobs queued, then end the thread. Cost: their time."""
        self._jobs.put(None)
        self._thread.join()


class NodeService:
    """A replica process's work, started with :meth:`run`. Raises
    ``replication.store.FolderInUse`` or ``StoreDamaged`` (see
    ``replication.sqlite``) if its folder cannot be used.

    Cost: see the module docstring.
    """

    def __init__(
        self,
        node_id: str,
        folder: Path,
        *,
        transport: Callable[[Random], NodeTransport],
        interval: float = 0.2,
        flush_interval: float = 1.0,
        max_state: int = MAX_STATE,
        prune_after: float = 300.0,
        repair: bool = False,
        keep_answers: int = KEEP_ANSWERS,
        keep_answer_bytes: int = KEEP_ANSWER_BYTES,
        membership: MembershipSettings | None = None,
        leave_on_stop: bool = False,
        leave_timeout: float = 30.0,
    ) -> None:
        self.folder = folder
        self.store = SQLiteStore(
            folder,
            node=node_id,
            repair=repair,
            window=AnswerWindow(keep_answers, keep_answer_bytes),
        )
        try:
            stored = self.store.load()
            for line in self.store.repairs:
                log.warning("%s: repair: %s", node_id, line)
            rng = Random(os.urandom(16))  # incarnations must not repeat across restarts
            self.transport = transport(rng)
            peers = self.transport.peers
            # Acks report only what the store holds (docs/consistency.md).
            replica = restore(stored, node_id, peers, rng=rng, durable_acks=True,
                              max_state=max_state,
                              prune_after=prune_after, max_frame=self.transport.max_frame)
            # The runtime's time is the event loop's (monotonic); the hybrid
            # clock's physical half is wall time, so LWW timestamps of
            # different nodes compare.
            replica.hlc.origin = time.time_ns() - time.monotonic_ns()
            replica.hlc.advance(time.monotonic())
            self.node = SnapshotNode(replica, colour=self._colour(stored))
            # Static peers are seeds too, by node id; the transport names
            # its other seeds (addresses over TCP).
            self.membership = Membership(
                replica.replica_id, self.transport.address,
                seeds=[*peers, *self.transport.seeds], rng=rng, settings=membership,
            )
            self.members = MemberNode(replica, self.membership, inner=self.node)
            self.membership.subscribe(self._on_member)
            log.info(
                "%s: %s as %s",
                node_id,
                f"restored {len(stored.entries)} keys from {self.store.path}"
                if stored.entries
                else f"no keys in {self.store.path}, starting empty",
                replica.replica_id,
            )
        except BaseException:
            self.store.close()  # and the folder with it
            raise
        self.runtime = NodeRuntime(self.members, self.transport.endpoint, interval=interval)
        self.leave_on_stop = leave_on_stop
        self.leave_timeout = leave_timeout
        self.flush_interval = flush_interval
        self.max_state = max_state
        # The requests answered, as the store keeps them; the answers
        # themselves stay on disk until a retry asks for one.
        self._window = AnswerWindow(keep_answers, keep_answer_bytes)
        for request_id, answer in _held_answers(stored, node_id).items():
            self._window.add(request_id, len(answer))
        self._inflight: dict[bytes, _Request] = {}
        self._queue: list[_Request] = []
        self._changes = WriteBehind(replica)
        replica.subscribe(self._write_soon)
        self._failing = False  # the last commit failed: gossip waits for the timer
        self._written_colour = self.node.colour
        self._written_identity = False
        # Group commit (_enqueue, _start, _committed): one commit at a time
        # with the store's thread, the next one staged as it ends.
        self._committing = False  # a commit is with the store's thread
        self._starting: asyncio.Handle | None = None  # a _start, scheduled
        # The loop it runs on, from run(): asyncio.get_running_loop() per
        # request cost a getpid() each on Python 3.11.
        self._loop: asyncio.AbstractEventLoop
        self._closing = self._closed = False  # stopping: the last commits / none
        self._flush_due = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._idle = asyncio.Event()  # set while no commit is with the store
        self._idle.set()
        self._thread_name = f"{node_id}-store"
        self._store_thread: _StoreThread
        # Peers a write at a consistency level wants pushed to, once per turn
        # of the event loop (a commit's writers share one push).
        self._push_to: set[str] = set()

    def _colour(self, stored: Stored) -> int:
        # The snapshots recorded before the restart: never recorded again.
        # A store written before colours keeps per-initiator "epochs"; their
        # largest number is the colour to go on from.
        try:
            if "colour" in stored.meta:
                colour = codec.decode_plain(stored.meta["colour"])
                if type(colour) is not int or not 0 <= colour <= MAX_COLOUR:
                    raise DecodeError(f"not a colour: {colour!r:.40}")
                return colour
            epochs = expect_list(codec.decode_plain(stored.meta.get("epochs", b"\x80")), "epochs")
            numbers = [n for n in epochs[1::2] if type(n) is int and n >= 1]
            if len(epochs) % 2 or len(numbers) != len(epochs) // 2:
                raise DecodeError("epochs are [initiator, number] pairs")
            return min(max(numbers, default=0), MAX_COLOUR)
        except DecodeError as exc:
            raise StoreDamaged(f"{self.store.path} is damaged: its snapshot colour: {exc}") from exc

    @property
    def node_id(self) -> str:
        """This node's id. Cost: O(1)."""
        return self.node.node_id

    @property
    def replica(self) -> Replicator:
        """The replica this process runs. Cost: O(1)."""
        return self.node.replica

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Listen, gossip and serve until ``stop`` is set (after leaving the
        cluster, with ``leave_on_stop``) or this member is removed; then write
        what is left and release the folder. ``ready`` is set once it listens.
        Cost: for as long as it runs."""
        halt = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._store_thread = _StoreThread(self._thread_name)
        try:
            await self.transport.start(self)
            address = self.transport.address
            if self.membership.status == Status.JOINING:
                self.membership.set_address(address)  # the real port, once listening
            log.info("%s: listening on %s as %s", self.node.node_id, address,
                     self.replica.replica_id)
            if ready is not None:
                ready.set()
            loop = asyncio.get_running_loop()
            self._flush_due = loop.time() + self.flush_interval
            self._flush_timer = loop.call_later(self.flush_interval, self._flush_tick)
            watcher = asyncio.create_task(self._watch(stop, halt))
            try:
                await self.runtime.run(halt)
            finally:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
                await self._drain()
            log.info("%s: stopped; %s; refused %s", self.node.node_id, self._stats(),
                     self.transport.refused() or "nothing")
        finally:
            self._closed = True
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            self._store_thread.close()
            self.store.close()

    async def _watch(self, stop: asyncio.Event, halt: asyncio.Event) -> None:
        # Halts the node when it is removed, or when told to stop (leaving
        # the cluster first with leave_on_stop, for at most leave_timeout).
        membership, loop = self.membership, asyncio.get_running_loop()
        poll = self.runtime.interval

        def removed() -> bool:
            return membership.status == Status.REMOVED

        while not stop.is_set() and not removed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), poll)
        if stop.is_set() and self.leave_on_stop and not removed():
            membership.leave()
            log.info("%s: leaving the cluster before it stops", self.node.node_id)
            deadline = loop.time() + self.leave_timeout
            while not removed() and loop.time() < deadline:
                await asyncio.sleep(poll)
        if removed():
            log.info("%s: removed from the cluster; stopping (a restart joins as a new member)",
                     self.node.node_id)
        elif self.leave_on_stop:
            log.warning("%s: the leave did not finish within %.0f s; stopping anyway",
                        self.node.node_id, self.leave_timeout)
        await self.transport.stop_serving()  # while the endpoint is still open
        halt.set()

    def _on_member(self, event: MemberEvent) -> None:
        # Where to reach each member: learnt from the members' state.
        record = event.member
        node = record.node
        if event.kind in ("unreachable", "reachable"):
            log.warning("%s: node %s (%s) is %s", self.node.node_id, node, record.member,
                        event.kind)
            return
        log.info("%s: member %s at %s is %s", self.node.node_id, record.member,
                 record.address or "?", event.kind)
        if node == self.node.node_id or record.status == Status.REMOVED:
            return
        self.transport.locate(node, record.address)

    def _stats(self) -> str:
        s = self.replica.stats
        return f"{s.updates} updates, {s.merged} merged, {len(self.replica.keys())} keys"

    # -- durability ------------------------------------------------------------------

    def _enqueue(self, request: _Request) -> None:
        # Group commit: every update queued when a commit starts goes into
        # it. A commit starts at the end of this turn of the event loop (so
        # that every request read in it joins), or as soon as the one with
        # the store ends.
        if self._closed:
            self._finish(request, _Answer(False, b"not applied: the node is stopping"))
            return
        self._queue.append(request)
        if not self._committing and self._starting is None:
            self._starting = self._loop.call_soon(self._start)

    def idle(self) -> None:
        """Called by a transport that has served every request it had at
        hand and waits to read more: a commit due at the end of this turn
        of the event loop starts now if nothing else is to run in the turn
        (nothing could join it there), a turn sooner; a client waiting for
        each answer waited that turn on every update. Cost: O(1)."""
        starting = self._starting
        if starting is None:
            return
        # The loop's callbacks due: only that _start, or others that a
        # request might join it from. Read where asyncio's own loops keep
        # them (a private attribute, only read: a loop without it, uvloop
        # for one, starts the commit at the end of the turn, as before).
        ready: deque[asyncio.Handle] = getattr(self._loop, "_ready", deque())
        if len(ready) == 1 and ready[0] is starting:
            starting.cancel()  # (a cancelled handle is skipped when its turn comes)
            self._start()

    def _write_soon(self, key: str, state: object) -> None:
        # Gossip changed a key: write it at the end of this turn of the loop
        # (with whatever else changed in it), not after the flush interval:
        # the peer that pushed it waits for our acknowledgement, which
        # reports only what the store holds (and a write at a consistency
        # level waits with it). Commits are grouped, one at a time. After a
        # failed commit (a full disk), only every flush interval.
        if self._changes.paused or self._closed or self._failing:
            return
        self._flush_due = min(self._flush_due, self._loop.time())
        if not self._committing and self._starting is None:
            self._starting = self._loop.call_soon(self._start)

    def _flush_tick(self) -> None:
        # Keys changed by gossip go into the first commit after their interval
        # (due now, even if the timer fired a clock tick early).
        self._flush_timer = None
        self._flush_due = min(self._flush_due, self._loop.time())
        if not self._committing:
            self._start()

    def _start(self) -> None:
        """Stage what is queued (and, once the flush interval is over or the
        node stops, the keys gossip changed) and hand its rows to the
        store's thread; :meth:`_committed` takes it from there."""
        self._starting = None
        if self._committing:
            return
        loop = self._loop
        flush = self._closing or loop.time() >= self._flush_due
        requests, self._queue = self._queue, []
        if not requests and not flush:
            return
        try:
            job = self._stage_commit(requests, flush=flush)
        except Exception as exc:  # a bug: the requests are answered, the node goes on
            log.exception("%s: staging a commit failed", self.node_id)
            for request in requests:
                self._finish(request, _Answer(False, f"not applied: {exc!r}"[:500].encode()))
            return
        if flush:
            self._flush_due = loop.time() + self.flush_interval
            if self._flush_timer is not None:
                self._flush_timer.cancel()
            self._flush_timer = None if self._closing else loop.call_later(
                self.flush_interval, self._flush_tick)
        if not (job.rows or job.answers or job.meta):
            self._committed(job, None, None)
            return
        self._committing = True
        self._idle.clear()
        self._store_thread.call(loop, functools.partial(
            self.store.commit, sorted(job.rows.items()), job.answers, job.meta,
        ), functools.partial(self._committed, job))

    def _stage_commit(self, requests: list[_Request], *, flush: bool) -> _Commit:
        replica = self.replica
        batch, rows, staged = self._stage_all(requests)
        # The batch's rows hold its keys' gossip too.
        changes = self._changes
        written = set(rows) & changes.keys
        changes.keys -= written
        if flush:
            taken = changes.take()
            written |= taken.keys()
            rows.update(taken)
        meta: dict[str, bytes] = {}
        if not self._written_identity:  # once per start: it does not change
            meta = {"node": replica.node_id.encode(), "replica": replica.replica_id.encode()}
        colour = self.node.colour
        if colour != self._written_colour:
            meta["colour"] = codec.encode_plain(colour)
        answers = [(request.request_id, answer) for request, (answer, _) in staged]
        # Every change is in this commit or written already: once it commits,
        # acks may report all the replica holds now.
        mark = replica.durable_mark() if not changes.keys else None
        return _Commit(batch, rows, staged, written, answers, meta, colour, mark)

    def _committed(self, job: _Commit, _: object, error: BaseException | None) -> None:
        """The store's thread is done with ``job`` (``error`` if its commit
        failed): apply and acknowledge it, or discard it and answer "not
        applied"; then start the next commit if anything waits."""
        self._committing = False
        replica = self.replica
        self._failing = error is not None
        if error is not None:
            replica.discard(job.batch)
            self._changes.keys |= job.written
            if isinstance(error, CommitFailed):
                log.error("%s: %s; %d updates not applied", replica.node_id, error,
                          len(job.staged))
            else:  # not the disk's fault: a bug, but nothing of it was applied
                log.error("%s: a commit failed: %r; %d updates not applied", replica.node_id,
                          error, len(job.staged), exc_info=error)
            for request, _ in job.staged:
                self._finish(request, _Answer(False, f"not applied: {error}".encode()))
        else:
            # Clients hear first, then the batch is applied, in this same
            # callback: nothing can read the replica in between (a client's
            # next request is read after it), and each client goes on while
            # the node applies instead of after (a sequential client waited
            # for the apply on every update).
            for request, (answer, done) in job.staged:
                if request.reply is not None:
                    self._reply_to(request, _Answer(True, answer, done))
            changes = self._changes
            changes.paused = True  # what the batch changes is written already
            try:
                replica.apply(job.batch)
            finally:
                changes.paused = False
            self._written_colour = job.colour
            self._written_identity = True
            # Nothing waits to be written: acks may report all the replica
            # holds (the batch just applied included); else what the commit held.
            mark = replica.durable_mark() if not changes.keys else job.mark
            acks = [] if mark is None else replica.written(mark)
            if acks and not self._closing:  # (stopping: the endpoint is closed)
                self._send_now(acks)
            head = replica.head
            window = self._window
            for request, (answer, done) in job.staged:
                window.add(request.request_id, len(answer))
                self._finish(request, _Answer(True, answer, done, head), replied=True)
        if self._queue or (not self._closing and self._loop.time() >= self._flush_due):
            self._start()
        if not self._committing:
            self._idle.set()

    def _finish(self, request: _Request, answer: _Answer, *, replied: bool = False) -> None:
        """Answer ``request`` (its client directly, unless ``replied``
        already, and whoever else waits for it); a retry of it is then
        answered from the window."""
        if self._inflight.get(request.request_id) is request:
            del self._inflight[request.request_id]
        if request.reply is not None and not replied:
            self._reply_to(request, answer)
        if request.done is not None and not request.done.done():
            request.done.set_result(answer)

    def _reply_to(self, request: _Request, answer: _Answer) -> None:
        assert request.reply is not None
        number, reply = request.reply
        try:
            reply(_done(number, answer, key=request.key))
        except Exception:  # the client's connection: never the commit's business
            log.exception("%s: answering a client failed", self.node_id)

    async def _drain(self) -> None:
        """The last commits, once the node stops: what is queued, and every
        key gossip changed; later requests are answered "not applied"."""
        self._closing = True
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        while True:
            await self._idle.wait()
            self._start()  # a flush, closing: even with nothing queued
            await self._idle.wait()
            if not self._queue:
                break
        self._closed = True

    def _stage_all(
        self, requests: list[_Request]
    ) -> tuple[Staged, dict[str, bytes], list[tuple[_Request, tuple[bytes, list[object]]]]]:
        """Stage a batch: the batch, its keys' rows, and each staged request
        with its answer. A key's row is encoded once per batch; if one comes
        out over ``max_state``, the batch is staged again an update at a time
        (its dots are not reused) so only the updates that grow a key too far
        are refused. A type's own code that fails otherwise (a user's type
        with a bug) may have changed the batch's copy half-way: that update
        is answered "failed" and the rest are staged again without it."""
        batch = self.replica.stage()
        staged = []
        broken = False
        for request in requests:
            try:
                staged.append((request, self._stage(batch, request)))
            except (CrdtkitError, ValueError, TypeError) as exc:
                self._finish(request, _Answer(False, f"refused: {exc}".encode()))
            except Exception as exc:
                log.exception("%s: %s.%s failed on %r", self.replica.node_id,
                              request.type_name, request.kind, request.key)
                self._finish(request, _Answer(False, f"failed: {exc!r}"[:500].encode()))
                broken = True
        if broken:
            self.replica.discard(batch)
            return self._stage_all([request for request, _ in staged])
        rows = {key: encode_row(batch.entry(key)) for key in batch.keys()}  # noqa: SIM118 (a list, not a dict)
        if all(len(row) <= self.max_state for row in rows.values()):
            return batch, rows, staged
        self.replica.discard(batch)
        # Copies of the deltas: undo rebuilds a key from the earlier ones,
        # which a user's type might share with the state the refused one changed.
        batch, rows, kept = self.replica.stage(copies=True), {}, []
        for request, _ in staged:
            answer = self._stage(batch, request)  # as before: it staged then
            row = encode_row(batch.entry(request.key))
            if len(row) > self.max_state:
                batch.undo()
                self._finish(request, _Answer(False, (
                    f"refused: the state of {request.key!r:.60} would take {len(row):,} bytes, "
                    f"over the maximum of {self.max_state:,}").encode()))
                continue
            rows[request.key] = row
            kept.append((request, answer))
        return batch, rows, kept

    def _stage(self, batch: Staged, request: _Request) -> tuple[bytes, list[object]]:
        """Stage one update; its answer, as kept and as sent. Its arguments
        were validated when it was queued; staging checks the key's type
        again (gossip may have brought the key meanwhile)."""
        method, args, clock = request.mutator.method, request.args, self.replica.hlc
        delta, dot, observed = batch.update(
            request.key, request.cls, lambda s, me: method(s, me, clock, *args)
        )
        done: list[object] = [*dot, observed.to_payload(), codec.encode(delta)]
        return codec.encode_plain([request.key, *done]), done

    def _submit(
        self,
        fields: list[object],
        *,
        fresh: bool = False,
        reply: tuple[int, Callable[[bytes], None]] | None = None,
    ) -> asyncio.Future[_Answer] | None:
        """Queue an update for the next commit. With ``reply`` (the client
        protocol's request number and where its transport takes the answer),
        the commit hands the answer there itself and None is returned; otherwise, and
        for a retried request, the update's answer when it has one. A retried
        request gets the first one's (read back from the store if it was
        answered already), never a second application."""
        key, type_name, kind, args, request_id = fields
        if not isinstance(key, str):
            raise DecodeError("a key is a str")
        if type(request_id) is not bytes or not 0 < len(request_id) <= MAX_REQUEST_ID:
            raise DecodeError(f"a request id is 1 to {MAX_REQUEST_ID} bytes")
        waiting = self._inflight.get(request_id)
        if waiting is not None:  # the same request, retried while it commits
            return waiting.waiter()
        if not fresh and request_id in self._window.sizes:  # answered: read it back
            return asyncio.ensure_future(self._answered(request_id, fields))
        # Through the type's operation table: an operation the key's type
        # does not take, or arguments it refuses, are answered with an error
        # before anything is queued (staging checks the type again: gossip
        # may bring the key meanwhile).
        cls, table = protocol.operations(type_name)
        mutator = table.mutator(kind)
        items = table.validate(kind, expect_list(args, "arguments"), max_size=self.max_state)
        held = self.replica.type_of(key)  # not get(): a copy of the key, O(its size)
        if held is not None and held is not cls:
            raise InvalidOperation(f"{key!r:.60} holds a {held.__name__}; "
                                   f"{type_name} operations do not apply to it")
        request = _Request(key, cls, mutator, items, request_id, reply)
        # Forgotten when answered (_finish), even if the client that asked
        # has gone: it is not taken out of the commit it is in.
        self._inflight[request_id] = request
        self._enqueue(request)
        return None if reply is not None else request.waiter()

    async def _answered(self, request_id: bytes, fields: list[object]) -> _Answer:
        held = await self._store_thread.run(functools.partial(self.store.answer, request_id))
        if held is not None:
            return _Answer(True, held)
        waiting = self._submit(fields, fresh=True)  # gone since: apply it now
        assert waiting is not None  # (no reply given)
        return await waiting

    # -- clients ---------------------------------------------------------------------

    @overload
    def serve(self, kind: str, request: int, fields: list[object]) -> Awaitable[bytes]: ...

    @overload
    def serve(self, kind: str, request: int, fields: list[object],
              send: Callable[[bytes], None]) -> Awaitable[bytes] | None: ...

    def serve(self, kind: str, request: int, fields: list[object],
              send: Callable[[bytes], None] | None = None) -> Awaitable[bytes] | None:
        """The answer to one client request, parsed (``protocol.parse``), as
        its transport sends it: for the others a coroutine; for an update a
        future set by its commit (no task, and no future between, per
        update), or, given ``send``, None: its commit hands the answer to
        ``send`` then, which saves a transport a callback and a turn of the
        event loop per update. A request that cannot be served is answered
        with an error, never raised. Cost: the request's."""
        if kind == "update":
            loop = self._loop
            try:
                level, timeout = _level(fields[5:])
                if len(fields) > 5:  # at a consistency level: answered once it got there
                    waiting = self._submit(fields[:5])
                    assert waiting is not None  # (no reply given)
                    return self._update_at(request, waiting, level, timeout)
                if send is not None:
                    waiting = self._submit(fields[:5], reply=(request, send))
                    if waiting is None:  # queued: its commit answers
                        return None
                    answer: asyncio.Future[bytes] = loop.create_future()
                else:
                    answer = loop.create_future()
                    waiting = self._submit(
                        fields[:5], reply=(request, functools.partial(_settle, answer)))
                    if waiting is None:
                        return answer
            except (CrdtkitError, ValueError, TypeError) as exc:
                failed: asyncio.Future[bytes] = loop.create_future()
                failed.set_result(protocol.encode("error", request, f"{exc}"[:500]))
                return failed

            def answered(done: asyncio.Future[_Answer]) -> None:
                if done.cancelled():
                    answer.cancel()
                elif (exc := done.exception()) is not None:
                    answer.set_result(protocol.encode("error", request, f"{exc}"[:500]))
                else:
                    answer.set_result(_done(request, done.result()))

            waiting.add_done_callback(answered)
            return answer
        return self._reply(kind, request, fields)

    async def _reply(self, kind: str, request: int, fields: list[object]) -> bytes:
        try:
            if kind == "get" and len(fields) == 3:
                return await self._get_at(request, fields)
            return self._answer(kind, request, fields)
        except (CrdtkitError, ValueError, TypeError) as exc:
            return protocol.encode("error", request, f"{exc}"[:500])

    # -- consistency levels (docs/consistency.md) -------------------------------------

    def _members(self) -> list[str]:
        """The current members a level counts: the nodes with a member up,
        leaving or exiting, reachable or not, and this node."""
        nodes = {m.node for m in self.membership.members if m.status in _COUNTED}
        return sorted(nodes | {self.node.node_id})

    async def _update_at(self, request: int, waiting: asyncio.Future[_Answer],
                         level: Level, timeout: float) -> bytes:
        # The update commits as any other (shielded: the commit owns the
        # future, whoever stops waiting); then its spread is awaited. Not
        # reaching the level is an answer, not an error: the update is
        # durable here and gossip still spreads it.
        try:
            answer = await asyncio.shield(waiting)
        except (CrdtkitError, ValueError, TypeError) as exc:
            answer = _Answer(False, f"{exc}".encode())
        if not answer.applied:
            reply = _done(request, answer)
        else:
            reached = await self._spread(answer.position or self.replica.head, level, timeout)
            reply = _done(request, answer, reached)
        return reply

    async def _spread(self, position: int, level: Level, timeout: float) -> Reached:
        """Wait until ``level`` of the current members hold this replica's
        log up to ``position`` (each acknowledgement is counted as it
        arrives, pushing to them at once), or ``timeout`` seconds."""
        replica = self.replica
        quorum = Quorum(level, self.node.node_id, self._members())
        for node in replica.holders(position):
            quorum.add(node)
        if quorum.done or timeout <= 0:
            return quorum.reached
        reached: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def acked(node: str, at: int) -> None:
            if at >= position and quorum.add(node) and not reached.done():
                reached.set_result(None)

        stop = replica.subscribe_acks(acked)
        try:
            self._push_soon(quorum.waiting_for)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await reached
        finally:
            stop()
        return quorum.reached

    def _push_soon(self, nodes: list[str]) -> None:
        # One push per peer for every write waiting in this turn of the loop.
        if not self._push_to:
            asyncio.get_running_loop().call_soon(self._push_now)
        self._push_to.update(nodes)

    def _push_now(self) -> None:
        nodes, self._push_to = self._push_to, set()
        self._send_now(self.replica.replicate(nodes))

    def _send_now(self, frames: list[Outgoing]) -> None:
        # Frames the replica made outside its tick and receive: coloured as
        # the snapshot layer colours every frame, sent on the node's transport.
        for destination, frame in self.node.wrap(frames):
            self.transport.endpoint.send(destination, frame)

    async def _get_at(self, request: int, fields: list[object]) -> bytes:
        """A read at a consistency level: the key's state merged from
        ``level`` of the current members' answers (or what arrived before
        the timeout), and how far it got."""
        key = fields[0]
        if not isinstance(key, str):
            raise DecodeError("a key is a str")
        level, timeout = _level(fields[1:])
        replica = self.replica
        quorum = Quorum(level, self.node.node_id, self._members())
        if not quorum.done and timeout > 0:
            gathered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            number, frames = replica.ask(key, quorum.waiting_for)

            def answered(node: str, asked: int, _key: str, complete: bool) -> None:
                if asked == number and complete and quorum.add(node) and not gathered.done():
                    gathered.set_result(None)

            stop = replica.subscribe_answers(answered)
            try:
                self._send_now(frames)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await gathered
            finally:
                stop()
        state = replica.get(key)
        held = None if state is None else codec.encode(state)
        ops = replica.ops(key).to_payload()
        return protocol.encode("state", request, held, ops, quorum.reached.to_payload())

    def _answer(self, kind: str, request: int, fields: list[object]) -> bytes:
        replica = self.replica
        if kind == "get":
            (key,) = fields
            if not isinstance(key, str):
                raise DecodeError("a key is a str")
            state = replica.get(key)
            held = None if state is None else codec.encode(state)
            return protocol.encode("state", request, held, replica.ops(key).to_payload())
        if kind == "keyspace" and not fields:
            return protocol.encode("keyspace", request, replica.encode_keyspace())
        if kind == "snapshot" and not fields:
            taken = self.node.initiate()
            log.info("%s: snapshot %s initiated", self.node.node_id, taken)
            return protocol.encode("snapshot", request, *taken)
        if kind == "recording" and len(fields) == 2:
            initiator, number = fields
            if not isinstance(initiator, str) or type(number) is not int:
                raise DecodeError("a snapshot id is [initiator, number]")
            part = self.node.recording(SnapshotId(initiator, number))
            if part is None:
                return protocol.encode("recording", request, None)
            channels = [[source, list(frames)] for source, frames in part.channels.items()]
            return protocol.encode("recording", request, [part.state.to_bytes(), channels])
        if kind == "members" and not fields:
            unreachable = self.membership.unreachable
            rows = [
                [m.member, m.node, m.address, m.status.name.lower(), m.node in unreachable]
                for m in self.membership.state
            ]
            return protocol.encode("members", request, rows)
        if kind == "leave" and not fields:
            left = self.membership.leave()
            log.info("%s: asked to leave the cluster%s", self.node.node_id,
                     "" if left else " (leaving already)")
            return protocol.encode("leave", request, self.membership.status.name.lower())
        if kind == "down" and len(fields) == 1:
            (target,) = fields
            if not isinstance(target, str) or not target:
                raise DecodeError("a node to down is a non-empty str")
            downed = self.membership.down(target)
            log.info("%s: an operator downed %s: %s", self.node.node_id, target,
                     ", ".join(downed) or "no such member")
            return protocol.encode("down", request, downed)
        if kind == "stats" and not fields:
            return protocol.encode("stats", request, [x for pair in self.counters() for x in pair])
        raise DecodeError(f"a node does not answer {kind!r} requests")

    def counters(self) -> list[tuple[str, int]]:
        """The node's counters, by name. Cost: O(1)."""
        r = self.replica.stats
        return [
            ("updates", r.updates),
            ("merged", r.merged),
            ("redundant", r.redundant),
            ("catch_ups", r.catch_ups),
            *self.transport.counters(),
            ("frames_refused", self.members.refusals),
            ("reads_answered", r.reads),
            ("read_answers", r.answers),
            ("members", len(self.membership.members)),
            ("unreachable", len(self.membership.unreachable)),
        ]


def _held_answers(stored: Stored, node_id: str) -> OrderedDict[bytes, bytes]:
    """The stored answers whose update the store holds. An answer and its
    update's row are committed together, so the others are of updates lost
    to damage (or dropped by a repair): a retry must apply them again."""
    held = {entry.key: entry.dots for entry in stored.entries}
    kept: OrderedDict[bytes, bytes] = OrderedDict()
    for request, answer in stored.answers.items():
        try:
            key, replica, counter, *_ = expect_list(codec.decode_plain(answer), "answer")
        except (DecodeError, ValueError):
            continue
        ops = held.get(key) if isinstance(key, str) else None
        if (
            ops is not None
            and isinstance(replica, str)
            and type(counter) is int
            and ops.contains(replica, counter)
        ):
            kept[request] = answer
    if len(kept) < len(stored.answers):
        log.warning(
            "%s: %d answered updates are not in the store (lost to damage, or dropped by a "
            "repair); a retry of one applies it again",
            node_id, len(stored.answers) - len(kept),
        )
    return kept


def _settle(future: asyncio.Future[bytes], data: bytes) -> None:
    if not future.done():
        future.set_result(data)


#: ``"done"`` as the start of an answer's array of six: its header and kind.
_DONE_HEAD = b"\x86" + codec.encode_plain("done")


def _done(request: int, answer: _Answer, reached: Reached | None = None,
          key: str | None = None) -> bytes:
    """The client protocol's answer to an update that ended as ``answer``
    (with how far it spread, for one at a consistency level). Given the
    update's ``key``, an applied answer is spliced from the bytes the store
    keeps (``[key, replica, counter, observed, delta]``): its last four
    items, encoded once at staging, are the answer's last four (encoding
    them again was a twentieth of a node's CPU per update)."""
    if not answer.applied:
        return protocol.encode("error", request, answer.fields.decode()[:500])
    if key is not None and reached is None and answer.fields[:1] == b"\x85":
        size = len(key.encode())
        head = 2 + size + (size >= 24) + (size >= 256) + 2 * (size >= 65536)
        return b"".join((_DONE_HEAD, codec.encode_plain(request), answer.fields[head:]))
    done = answer.done
    if done is None:  # read back from the store: after its key
        _, *done = expect_list(codec.decode_plain(answer.fields), "answer")
    if reached is not None:
        done = [*done, reached.to_payload()]
    return protocol.encode("done", request, *done)


def _level(fields: list[object]) -> tuple[Level, float]:
    """A request's ``[level, timeout in ms]`` (none: local), checked."""
    if not fields:
        return "local", 0.0
    level, timeout = fields
    if type(timeout) is not int or not 0 <= timeout <= MAX_LEVEL_TIMEOUT:
        raise DecodeError(f"a level's timeout is 0 to {MAX_LEVEL_TIMEOUT} ms")
    return check_level(level), timeout / 1000
