"""crdtkit's benchmark suite, run from a checkout as ``python -m bench``.

Every figure is timed beside a plain-Python *floor* in the same process, the
operation that does the same work with no CRDT bookkeeping, and is reported as
the ratio figure / floor: absolute times do not travel between machines, ratios
measured in one run do (see PERFORMANCE.md). The suite only reports; it never
fails because something is slow.
"""

from __future__ import annotations

from bench.cli import main

__all__ = ["main"]
