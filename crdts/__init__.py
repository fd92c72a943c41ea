"""crdtkit's convergent replicated data types.

Every type is a mutable join-semilattice with delta mutators; see
``crdts.base`` for the protocol they share and ``crdts.codec`` for the wire
format.

>>> from crdts import GCounter, ORSet
>>> c = GCounter(); _ = c.increment("a", 2); c.value
2
"""

from crdts.base import CRDT, join, leq
from crdts.dotcontext import CausalContext
from crdts.errors import (
    CRDTError,
    CrdtkitError,
    DecodeError,
    InvalidOperation,
    StateTooLarge,
)
from crdts.gcounter import GCounter
from crdts.lwwregister import LWWRegister
from crdts.mvregister import MVRegister
from crdts.ormap import ORMap
from crdts.orset import ORSet
from crdts.pncounter import PNCounter
from crdts.vclock import Order, VectorClock

__all__ = [
    "CRDT",
    "CRDTError",
    "CausalContext",
    "CrdtkitError",
    "DecodeError",
    "GCounter",
    "InvalidOperation",
    "LWWRegister",
    "MVRegister",
    "ORMap",
    "ORSet",
    "Order",
    "PNCounter",
    "StateTooLarge",
    "VectorClock",
    "join",
    "leq",
]
