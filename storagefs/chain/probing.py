"""Probing: asking the chain's unwell remotes about once a second.

Owns the background task (:meth:`Prober.run`, ended by :meth:`Prober.stop`) and the set of
probes in flight. It reads the verdicts of :class:`~storagefs.chain.reachability.Reachability`
and asks through it (so the answer is noted where every other answer is); it keeps no state of
a remote's own.
"""

from __future__ import annotations

import logging

import trio

from storagefs.backends.base import Backend
from storagefs.chain.reachability import Reachability

log = logging.getLogger("storagefs.chain")

PROBE_INTERVAL = 1.0  # seconds between health probes of an unwell remote


class Prober:
    def __init__(self, reach: Reachability) -> None:
        self._reach = reach
        self._cancel = trio.CancelScope()

    def stop(self) -> None:
        self._cancel.cancel()

    async def run(self) -> None:
        """Ask each unwell remote's health about once a second, so that a remote that is well
        again gets its place back without a user's read paying for the test (and a hung one
        stays demoted for as long as it hangs). Through the breaker: an open one is not asked
        until its reset time, when the probe is its half-open trial."""
        reach = self._reach
        probing: set[str] = set()

        async def probe(remote: Backend) -> None:
            try:
                await reach.ask(remote, remote.health)
            except Exception as exc:  # the verdict is in the remote's state already
                log.debug("probe of %s: %s", remote.name, exc)
            finally:
                probing.discard(remote.name)

        with self._cancel:
            async with trio.open_nursery() as nursery:
                while True:
                    if not reach.any_unwell():
                        # Nothing to probe: sleep until a failure is seen, not on a timer.
                        await reach.wait_unwell()
                    await trio.sleep(PROBE_INTERVAL)
                    for remote in reach.remotes:
                        if remote.name not in probing and reach.state_of[remote.name].unwell():
                            probing.add(remote.name)
                            nursery.start_soon(probe, remote)
