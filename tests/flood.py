"""A flood of silent connections, in this process or in a process of its own
(``python -m tests.flood HOST PORT ADDRESSES PER_ADDRESS SECONDS``), for the
hostile-connection tests: an attacker on another machine does not share the
honest client's event loop, and a process of its own does not either.

Cost: a connection attempt per connection the node closes, until stopped.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def attackers(count: int) -> list[str]:
    """Loopback addresses other than 127.0.0.1 (where honest nodes dial from):
    Linux routes all of 127/8 to the loopback."""
    return [f"127.0.0.{2 + i}" for i in range(count)]


async def open_from(address: tuple[str, int], source: str,
                    tls: ssl.SSLContext | None = None) -> Stream:
    """A connection to ``address`` from the loopback address ``source``."""
    return await asyncio.open_connection(
        *address, local_addr=(source, 0), ssl=tls, server_hostname=address[0] if tls else None
    )


class Holders:
    """``per_source`` connections from each source address that say nothing,
    each opened again as soon as the endpoint closes it (an attacker that
    keeps the pressure on), until :meth:`stop`."""

    def __init__(self, address: tuple[str, int], sources: list[str], per_source: int) -> None:
        self.address, self.opened, self.open = address, 0, 0
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._hold(s)) for s in sources
                       for _ in range(per_source)]

    async def _hold(self, source: str) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await open_from(self.address, source)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            self.opened += 1
            self.open += 1
            try:
                stop = asyncio.create_task(self._stop.wait())
                ended = asyncio.create_task(reader.read(1 << 16))
                await asyncio.wait([stop, ended], return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                ended.cancel()
            finally:
                self.open -= 1
                writer.close()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _main(host: str, port: int, addresses: int, per_address: int, seconds: float) -> None:
    flood = Holders((host, port), attackers(addresses), per_address)
    await asyncio.sleep(seconds)
    await flood.stop()
    print(f"opened {flood.opened} connections", flush=True)


if __name__ == "__main__":
    host, port, addresses, per_address, seconds = sys.argv[1:6]
    asyncio.run(_main(host, int(port), int(addresses), int(per_address), float(seconds)))
