"""crdtkit's gossip replication: a sans-I/O replicator and the networks that drive it.

>>> from replication import Replicator
"""

from replication.replicator import Replicator, ReplicatorStats
from replication.transport import Node, Outgoing, Transport

__all__ = ["Node", "Outgoing", "Replicator", "ReplicatorStats", "Transport"]
