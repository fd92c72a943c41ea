"""Log lines limited by reason: a flood of one kind of event writes a line
now and then, with a count of the rest, not a line each.

A node on an open port cannot choose how often it is refused a handshake or
closes a connection: an attacker (or a misconfigured peer retrying in a loop)
chooses. A line for each buried everything else (38,646 lines in 20 s were
seen) and filled disks. :class:`RateLimitedLog` writes the first line of each
*reason* at once, then at most one line per reason per ``interval`` seconds,
and that line says how many like it it stands for. :meth:`RateLimitedLog.flush`
writes the counts still held back (the runtime calls it every interval and
when it closes), so a short burst is never silently forgotten. This is the
kernel's ``printk_ratelimit`` and journald's ``RateLimitBurst`` with a burst
of one.

The reasons are a small fixed set the caller names ("timed out", "failed
authentication", ...), never an address: the state is one entry per reason,
whatever the flood. Lines per minute are at most ``reasons * (60 / interval
+ 1)``.

Cost: O(1) per event; :meth:`RateLimitedLog.flush` O(reasons).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """One line per reason per ``interval`` seconds on ``logger``, by the
    clock ``clock`` (seconds, monotonic).

    >>> import io, logging
    >>> out = io.StringIO()
    >>> logger = logging.getLogger("ratelog-example")
    >>> logger.addHandler(logging.StreamHandler(out)); logger.propagate = False
    >>> now = [0.0]
    >>> lines = RateLimitedLog(logger, lambda: now[0], interval=10.0)
    >>> for host in ["10.0.0.1", "10.0.0.2", "10.0.0.3"]:
    ...     _ = lines.warning("timed out", "closed a connection from %s: timed out", host)
    >>> now[0] = 12.0
    >>> lines.flush()
    >>> print(out.getvalue(), end="")
    closed a connection from 10.0.0.1: timed out
    2 more like "timed out", not logged

    Cost: O(1) per line asked for.
    """

    __slots__ = ("_clock", "_interval", "_logger", "_reasons")

    def __init__(
        self, logger: logging.Logger, clock: Callable[[], float], *, interval: float = 10.0
    ) -> None:
        if not interval > 0:
            raise ValueError(f"a log interval is positive, got {interval!r}")
        self._logger = logger
        self._clock = clock
        self._interval = interval
        # reason -> [end of its quiet period, lines held back in it]
        self._reasons: dict[str, list[float]] = {}

    def log(self, level: int, reason: str, message: str, *args: object) -> bool:
        """Write ``message % args`` at ``level`` unless a line of ``reason``
        was written less than ``interval`` seconds ago; then count it. True if
        written. A line written after some were held back says how many.

        >>> lines = RateLimitedLog(logging.getLogger("quiet"), lambda: 0.0)
        >>> [lines.log(logging.INFO, "busy", "refused") for _ in range(3)]
        [True, False, False]

        Cost: O(1).
        """
        now = self._clock()
        entry = self._reasons.get(reason)
        if entry is not None and now < entry[0]:
            entry[1] += 1
            return False
        held = int(entry[1]) if entry is not None else 0
        self._reasons[reason] = [now + self._interval, 0]
        if held:
            message += " (and %s more like it, not logged)"
            args = (*args, f"{held:,}")
        self._logger.log(level, message, *args)
        return True

    def warning(self, reason: str, message: str, *args: object) -> bool:
        """:meth:`log` at WARNING.

        >>> RateLimitedLog(logging.getLogger("quiet"), lambda: 0.0).warning("x", "y")
        True

        Cost: O(1).
        """
        return self.log(logging.WARNING, reason, message, *args)

    def flush(self, prefix: str = "", *, force: bool = False) -> None:
        """Write, for each reason whose quiet period is over (every reason,
        with ``force``: at close), how many lines it held back; nothing for
        reasons that held none back.

        >>> RateLimitedLog(logging.getLogger("quiet"), lambda: 0.0).flush()

        Cost: O(reasons).
        """
        now = self._clock()
        for reason, entry in self._reasons.items():
            if entry[1] and (force or now >= entry[0]):
                self._logger.warning('%s%s more like "%s", not logged', prefix,
                                     f"{int(entry[1]):,}", reason)
                entry[0], entry[1] = now + self._interval, 0
