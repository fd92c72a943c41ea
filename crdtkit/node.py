"""One replica as a process: what ``crdtkit node`` runs.

A :class:`NodeService` runs a :class:`~snapshot.marker.SnapshotNode` over the
TCP runtime (``replication.tcp``), keeps its checkpoint in a folder, and serves
clients (``crdtkit.protocol``) on the same port:

- On start it restores from ``folder/checkpoint.snap`` if there is one, under
  a new incarnation (the file may be older than what the replica had sent
  before it stopped), else it starts empty.
- An update from a client is applied, appended to ``folder/updates.log`` (a
  ``snapshot.journal.Journal``; updates that arrive together share one
  fsync), and only then acknowledged: an acknowledged update survives a crash
  of the process.
- Every ``checkpoint_interval`` seconds, if the keyspace changed (local or
  merged updates), the checkpoint is rewritten and the journal emptied; once
  more on shutdown. Restarting, the node joins the journal into the
  checkpoint it reads.
- Clients can start a Chandy-Lamport snapshot and fetch the node's part of it.

Everything it logs goes to the ``crdtkit.node`` logger, one line per event.

Cost: an acknowledged update costs its journal record and a share of one
fsync; a checkpoint write is O(state size) plus two fsyncs; the rest is the
runtime's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from random import Random

from crdtkit import protocol
from crdts import codec
from crdts.errors import CRDTError, DecodeError
from replication.history import History, check_update
from replication.replicator import Replicator
from replication.tcp import Channel, Limits, NodeRuntime, PeerClosed, TcpEndpoint
from snapshot.cut import LocalState, SnapshotId
from snapshot.files import read_checkpoint, write_checkpoint
from snapshot.journal import Journal, read_journal
from snapshot.marker import SnapshotNode

__all__ = ["CHECKPOINT", "JOURNAL", "NodeService"]

CHECKPOINT = "checkpoint.snap"
JOURNAL = "updates.log"
log = logging.getLogger("crdtkit.node")


class NodeService:
    """A replica process's work, started with :meth:`run`.

    Cost: see the module docstring.
    """

    def __init__(
        self,
        node_id: str,
        key: bytes,
        folder: Path,
        *,
        listen: tuple[str, int],
        peers: Mapping[str, tuple[str, int]],
        interval: float = 0.2,
        checkpoint_interval: float = 1.0,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.folder = folder
        self.path = folder / CHECKPOINT
        folder.mkdir(parents=True, exist_ok=True)
        rng = Random(os.urandom(16))  # incarnations must not repeat across restarts
        journal, torn = read_journal(folder / JOURNAL)
        if torn:
            log.warning("%s: %d bytes at the end of %s were torn or damaged; dropped",
                        node_id, torn, folder / JOURNAL)
        if self.path.exists() or journal:
            local = (
                read_checkpoint(self.path)
                if self.path.exists()
                else LocalState(node_id, node_id, ())
            )
            if local.node != node_id:
                raise ValueError(f"{self.path} holds node {local.node!r}, not {node_id!r}")
            self.node = SnapshotNode.restore(local, list(peers), rng=rng, arriving=journal)
            log.info(
                "%s: restored %d keys from %s and %d updates from its journal as %s",
                node_id, len(local.entries), self.path, len(journal),
                self.node.replica.replica_id,
            )
        else:
            self.node = SnapshotNode(Replicator(node_id, list(peers), rng=rng))
            log.info("%s: no checkpoint in %s, starting empty", node_id, folder)
        self.endpoint = TcpEndpoint(
            node_id,
            key,
            rng=rng,
            listen=listen,
            peers=peers,
            limits=limits,
            server_ssl=server_ssl,
            client_ssl=client_ssl,
            on_client=self._serve,
        )
        self.runtime = NodeRuntime(self.node, self.endpoint, interval=interval)
        self.checkpoint_interval = checkpoint_interval
        self._written = -1  # the replica's count of changes at the last checkpoint
        self.journal = Journal(folder / JOURNAL)
        self._waiting: list[asyncio.Future[None]] = []
        self._flush = asyncio.Event()

    @property
    def replica(self) -> Replicator:
        """The replica this process runs. Cost: O(1)."""
        return self.node.replica

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Listen, gossip and serve until ``stop`` is set; then write a last
        checkpoint. ``ready`` is set once it listens. Cost: for as long as it runs."""
        await self.endpoint.start()
        host, port = self.endpoint.address
        log.info("%s: listening on %s:%d as %s", self.node.node_id, host, port,
                 self.replica.replica_id)
        if ready is not None:
            ready.set()
        writer = asyncio.create_task(self._checkpoints(stop))
        try:
            await self.runtime.run(stop)
        finally:
            self._flush.set()
            await writer
            waiting, self._waiting = self._waiting, []
            self._checkpoint(force=True)
            self.journal.close()
            for future in waiting:
                future.set_result(None)
            log.info("%s: stopped; %s; refused %s", self.node.node_id, self._stats(),
                     dict(self.endpoint.stats.refused) or "nothing")

    def _stats(self) -> str:
        s = self.replica.stats
        return f"{s.updates} updates, {s.merged} merged, {len(self.replica.keys())} keys"

    # -- durability ------------------------------------------------------------------

    def _checkpoint(self, *, force: bool = False) -> None:
        # No await in here: no update can be applied between the checkpoint
        # and the emptying of the journal, so nothing acknowledged is in
        # neither. (A record appended after it is of an update the
        # checkpoint holds already: read twice, it changes nothing.)
        # Every change to the keyspace is an update or a merge: counting them
        # says whether to write, without encoding the whole keyspace to see.
        changes = self.replica.stats.updates + self.replica.stats.merged
        if changes == self._written and not force:
            return
        write_checkpoint(self.path, self.node.checkpoint())
        self.journal.clear()
        self._written = changes

    async def _checkpoints(self, stop: asyncio.Event) -> None:
        # Group commit: every update appended when a sync starts is
        # acknowledged when it ends; now and then, fold it all into a checkpoint.
        loop = asyncio.get_running_loop()
        due = loop.time() + self.checkpoint_interval
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush.wait(), max(0.0, due - loop.time()))
            self._flush.clear()
            waiting, self._waiting = self._waiting, []
            try:
                self.journal.sync()
                if loop.time() >= due:
                    due = loop.time() + self.checkpoint_interval
                    self._checkpoint()
            except OSError as exc:
                log.error("%s: cannot write %s: %s", self.node.node_id, self.path, exc)
                for future in waiting:
                    future.set_exception(exc)
                continue
            for future in waiting:
                future.set_result(None)

    async def _durable(self) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._flush.set()
        await future

    # -- clients ---------------------------------------------------------------------

    async def _serve(self, channel: Channel) -> None:
        name = channel.peer.node
        try:
            while True:
                try:
                    kind, request, fields = protocol.parse(await channel.recv())
                except DecodeError as exc:
                    log.warning("%s: client %s sent a bad message: %s", self.node.node_id,
                                name, exc)
                    return
                try:
                    answer = await self._answer(kind, request, fields)
                except (CRDTError, ValueError, TypeError, OSError) as exc:
                    answer = protocol.encode("error", request, f"{exc}"[:500])
                await channel.send(answer)
        except PeerClosed:
            pass
        finally:
            channel.close()

    async def _answer(self, kind: str, request: int, fields: list[object]) -> bytes:
        replica = self.replica
        if kind == "update":
            key, type_name, update, args = fields
            if not isinstance(key, str):
                raise DecodeError("a key is a str")
            type_name, update, items = check_update(type_name, update, args)
            history = History()
            history.apply(replica, key, type_name, update, *items)
            op = history.operations[-1]
            self.journal.append([op.entry()])
            await self._durable()
            return protocol.encode(
                "done", request, *op.dot, op.observed.to_payload(), codec.encode(op.delta)
            )
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
        if kind == "stats" and not fields:
            return protocol.encode("stats", request, [x for pair in self.counters() for x in pair])
        raise DecodeError(f"a node does not answer {kind!r} requests")

    def counters(self) -> list[tuple[str, int]]:
        """The node's counters, by name. Cost: O(1)."""
        r, net = self.replica.stats, self.endpoint.stats
        return [
            ("updates", r.updates),
            ("merged", r.merged),
            ("redundant", r.redundant),
            ("catch_ups", r.catch_ups),
            ("frames_sent", net.sent),
            ("frames_received", net.received),
            ("bytes_sent", net.bytes_sent),
            ("bytes_received", net.bytes_received),
            ("connections_refused", sum(net.refused.values())),
            ("frames_refused", self.node.refusals),
        ]
