"""Every exit code of the ``storagefs`` commands, in one table (README, "Exit codes").

Scripts and probes branch on these, so a number means the same thing in every command: 0 all
done, 1 done but not everything (degraded, some objects failed, timed out), 2 nothing usable
(bad input, down, no answer), 130 interrupted.
"""

from __future__ import annotations

from collections.abc import Mapping

OK = 0
PARTIAL = 1  # download: some objects failed (listed); flush: timed out, changes still journaled
DEGRADED = 1  # health: serving, with a reason to look
USAGE = 2  # bad input, bad setting, bad mountpoint, unreachable endpoint: one error line
DOWN = 2  # health: down, not answering, or no health files (as bad as down for a probe)
INTERRUPTED = 130  # SIGINT, as shells report it (128 + 2)

# ``storagefs health`` by state; also the value of the storagefs_status gauge.
HEALTH: Mapping[str, int] = {"ok": OK, "degraded": DEGRADED, "down": DOWN}
HEALTH_UNKNOWN = DOWN  # an answer that cannot be read
# ``storagefs health``'s usage errors (several mounts and none named, a bad flag): sysexits.h's
# EX_USAGE, because its 2 means "down" and a probe must not take a typo for an outage.
HEALTH_USAGE = 64
