"""Consistent cuts of a running cluster and checks of strong eventual consistency.

- ``snapshot.cut``: :class:`GlobalSnapshot` and :class:`LocalState` (plain
  data, canonical encoding) and restoring replicas from them;
- ``snapshot.marker``: :class:`SnapshotNode`, the Chandy-Lamport algorithm
  over the replicator's channels, and :func:`take_snapshot`;
- ``snapshot.sec``: :func:`check`, the SEC verdicts on a cut;
- ``snapshot.files``: durable, verified snapshot and checkpoint files.

>>> from random import Random
>>> from crdts import GCounter
>>> from replication import Replicator
>>> from replication.simnet import SimulatedNetwork
>>> net = SimulatedNetwork(seed=1)
>>> for name in ("a", "b"):
...     net.add(SnapshotNode(Replicator(name, ["a", "b"], rng=Random(name))))
>>> _ = net.node("a").replica.update("hits", GCounter, lambda c, me: c.increment(me))
>>> print(check(take_snapshot(net, "b")))
consistent cut ............. ok
strong convergence ......... ok
monotone ................... ok
join equals specification .. not checked (no operation log)
"""

from snapshot.cut import GlobalSnapshot, LocalState, SnapshotId, restore_cluster, restore_replica
from snapshot.errors import SnapshotCorrupt, SnapshotError, SnapshotIncomplete
from snapshot.files import read_checkpoint, read_snapshot, write_checkpoint, write_snapshot
from snapshot.marker import SnapshotNode, gather, take_snapshot
from snapshot.sec import SECReport, Verdict, check

__all__ = [
    "GlobalSnapshot",
    "LocalState",
    "SECReport",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotId",
    "SnapshotIncomplete",
    "SnapshotNode",
    "Verdict",
    "check",
    "gather",
    "read_checkpoint",
    "read_snapshot",
    "restore_cluster",
    "restore_replica",
    "take_snapshot",
    "write_checkpoint",
    "write_snapshot",
]
