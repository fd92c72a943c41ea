"""The exceptions of `crdts`: who caused a failure, in the trio manner.

``InvalidOperation``: the caller asked for something the type cannot do (a
negative amount, an empty replica id); ``StateTooLarge``, one of them, a state
over the configured maximum size. ``DecodeError``: bytes from outside were
not a valid encoding. Both are ``ValueError`` so code that already guards
against bad values keeps working. Merging two different types is a programming
error and raises the builtin ``TypeError``.
"""

__all__ = ["CRDTError", "DecodeError", "InvalidOperation", "StateTooLarge"]


class CRDTError(Exception):
    """Base of every error that ``crdts`` raises on purpose."""


class InvalidOperation(CRDTError, ValueError):
    """An update the type refuses; the state is left exactly as it was."""


class DecodeError(CRDTError, ValueError):
    """Bytes that are not a valid, canonical encoding of a known CRDT."""


class StateTooLarge(InvalidOperation):
    """A state whose canonical encoding is over the configured maximum: the
    caller wrote more than the replica is set to hold or ship under one key."""
