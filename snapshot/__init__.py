"""Consistent cuts of a running cluster and checks of strong eventual consistency.

>>> from snapshot import GlobalSnapshot
"""

from snapshot.cut import GlobalSnapshot, LocalState, SnapshotId, restore_cluster, restore_replica
from snapshot.errors import SnapshotCorrupt, SnapshotError, SnapshotIncomplete

__all__ = [
    "GlobalSnapshot",
    "LocalState",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotId",
    "SnapshotIncomplete",
    "restore_cluster",
    "restore_replica",
]
