"""The exceptions of `snapshot`, in the trio manner: who caused the failure.

``SnapshotCorrupt`` (the data's fault, a ``crdts.errors.DataError``): a
snapshot file is torn, truncated, altered or not a snapshot at all; nothing
of it was loaded. ``SnapshotIncomplete`` (the peers', a ``PeerError``): a
snapshot could not finish (a node is down or cut off); no partial cut is
returned. ``SnapshotError`` is the base of both, for a caller that wants
whatever went wrong with a snapshot.
"""

from crdts.errors import CrdtkitError, DataError, PeerError

__all__ = ["SnapshotCorrupt", "SnapshotError", "SnapshotIncomplete"]


class SnapshotError(CrdtkitError):
    """Base of every error that ``snapshot`` raises on purpose."""


class SnapshotCorrupt(SnapshotError, DataError, ValueError):
    """A snapshot file that does not verify: nothing of it was loaded."""


class SnapshotIncomplete(SnapshotError, PeerError):
    """A snapshot that did not finish within its bound."""
