"""The background refresh: what it keeps, when it polls, and that it never raises."""

from __future__ import annotations

import asyncio
from typing import Any

from vpsshell.errors import Unavailable
from vpsshell.shell.watch import FAST_SECONDS, DomainWatch, Snapshot


class FakeHelper:
    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.calls = 0

    def fetch(self) -> Any:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_refresh_keeps_the_last_list_and_reports_changes() -> None:
    helper = FakeHelper()
    watch = DomainWatch(helper.fetch, 10.0)
    web1 = {"name": "web1", "state": "shutoff"}
    helper.answers = [[web1], [web1], Unavailable("helper gone"), "garbage"]

    async def scenario() -> list[bool]:
        return [await watch.refresh() for _ in range(4)]

    changes = asyncio.run(scenario())
    assert changes == [True, False, True, True]
    assert watch.snapshot == Snapshot((web1,), "the helper sent a malformed domain list")
    assert watch.names() == ["web1"]
    watch.close()


def test_polls_fast_only_while_something_changes() -> None:
    watch = DomainWatch(lambda: [], 10.0)
    watch.seed([{"name": "web1", "state": "running"}])
    assert watch.interval() == 10.0
    watch.seed([{"name": "web1", "state": "starting"}])
    assert watch.interval() == FAST_SECONDS
    watch.seed([{"name": "web1", "state": "running"}])
    watch.poke()
    assert watch.interval() == FAST_SECONDS
    watch.close()


def test_run_calls_back_on_change_and_wakes_on_poke() -> None:
    states = iter(["shutoff", "running"])
    watch = DomainWatch(lambda: [{"name": "web1", "state": next(states)}], 3600.0)
    seen: list[str | None] = []

    async def scenario() -> None:
        task = asyncio.create_task(watch.run(lambda: seen.append(watch.snapshot.error)))
        while not seen:
            await asyncio.sleep(0)
        watch.poke()  # a command ran: the next refresh comes now, not in an hour
        while len(seen) < 2:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert seen == [None, None]
    assert watch.snapshot.domains == ({"name": "web1", "state": "running"},)
    watch.close()
