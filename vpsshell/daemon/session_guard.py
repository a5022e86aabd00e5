"""Re-authorizing sessions that outlive their request: attached consoles, at a bounded interval.

A console stays attached for hours, long after the request that opened it was authorized. The
guard decides again for every attachment every ``session_recheck_seconds`` and just after each
local midnight (when ``expires=`` rules end), with the caller's groups looked up anew and the
account checked again with PAM (at most ``account_recheck_seconds`` old), and detaches whoever
may no longer be there. Policy reloads do the same at once (``assembly.on_reload``). It never
acts on a domain; it only ends access.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from vpsshell.daemon.authorization import Authorizer
from vpsshell.daemon.consoles import ConsoleManager

log = logging.getLogger("vpsshell.sessions")

MIDNIGHT_MARGIN_SECONDS = 0.5  # decide just after the day changed, never just before


def seconds_to_next_midnight(now: dt.datetime | None = None) -> float:
    """Seconds from ``now`` (local time) to the next local midnight."""
    now = now or dt.datetime.now()
    midnight = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time.min)
    return (midnight - now).total_seconds()


class SessionGuard:
    def __init__(
        self,
        authorizer: Authorizer,
        consoles: ConsoleManager,
        *,
        interval: float,
        account_max_age: float,
    ) -> None:
        self.authorizer = authorizer
        self.consoles = consoles
        self.interval = interval
        self.account_max_age = account_max_age

    def next_wait(self) -> float:
        return min(self.interval, seconds_to_next_midnight() + MIDNIGHT_MARGIN_SECONDS)

    async def run(self) -> None:
        """Check again and again until cancelled."""
        while True:
            await asyncio.sleep(self.next_wait())
            try:
                await self.check_now()
            except Exception:  # never let the guard die
                log.exception("re-checking attached sessions failed; will retry")

    async def check_now(self) -> int:
        """Decide again for every attachment; returns how many were ended."""
        callers = {a.caller.uid: a.caller for a in self.consoles.attachments()}
        for caller in callers.values():  # fresh verdicts for still_attached_allowed
            await self.authorizer.account_refused(caller, self.account_max_age)
        ended = self.consoles.revoke(self.authorizer.still_attached_allowed)
        if ended:
            log.info("ended %d console session(s) whose access ended", ended)
        return ended
