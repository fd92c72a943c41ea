"""The exceptions of `snapshot`, in the trio manner: who caused the failure.

``SnapshotCorrupt``: a snapshot file is torn, truncated, altered or not a
snapshot at all; nothing of it was loaded. ``SnapshotIncomplete``: a snapshot
could not finish (a node is down or cut off); no partial cut is returned.
"""

from crdts.errors import CRDTError

__all__ = ["SnapshotCorrupt", "SnapshotError", "SnapshotIncomplete"]


class SnapshotError(CRDTError):
    """Base of every error that ``snapshot`` raises on purpose."""


class SnapshotCorrupt(SnapshotError, ValueError):
    """A snapshot file that does not verify: nothing of it was loaded."""


class SnapshotIncomplete(SnapshotError):
    """A snapshot that did not finish within its bound."""
