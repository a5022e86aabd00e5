"""The background refresh: what it keeps, when it asks for ``list``, how it follows events.

The watch runs as the shell runs it, on an event loop (here in a thread of its own, so that the
test can wait with ``wait_until``), against a stand-in helper on a real Unix socket that speaks
the real protocol and counts the requests it gets (what the real helper's audit log would show).
"""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from harness import wait_until

from vpsshell import protocol
from vpsshell.shell.watch import DomainWatch, Snapshot, Timing, retry_delays

WEB1 = {"name": "web1", "state": "shutoff"}
SHORT = Timing(
    fast=0.05,
    busy_after_command=0.5,
    with_events=3600.0,
    burst=0.5,
    retry_first=0.1,
    retry_max=0.4,
    request_timeout=5.0,
)


def _read_message(stream: Any) -> dict[str, Any] | None:
    header = stream.read(protocol.HEADER.size)
    if len(header) < protocol.HEADER.size:
        return None
    _, length = protocol.parse_header(header)
    return protocol.decode_message(stream.read(length))


class _Answer(socketserver.StreamRequestHandler):
    server: FakeHelper

    def handle(self) -> None:
        helper = self.server
        request = _read_message(self.rfile)
        if request is None:
            return
        op, request_id = request["op"], request["id"]
        with helper.lock:
            helper.requests.append((op, time.monotonic()))
        if op == "list":
            self._send(protocol.reply_ok(request_id, helper.answer))
        elif helper.events_error is not None:
            self._send(protocol.reply_error(request_id, *helper.events_error))
        else:
            self._send(protocol.reply_ok(request_id, {"events": [], "follow": True}))
            with helper.lock:
                helper.followers.append(self.connection)
            self.rfile.read(1)  # the client sends nothing: this returns when it closes
            with helper.lock:
                helper.followers.remove(self.connection)
                helper.hung_up += 1

    def _send(self, message: dict[str, Any]) -> None:
        self.wfile.write(protocol.encode_message(message))


class FakeHelper(socketserver.ThreadingUnixStreamServer):
    """Answers ``list`` with ``answer``; ``events --follow`` with a stream that carries what
    ``send`` sends, or with ``events_error``. ``requests``: (op, when) of every request."""

    daemon_threads = True

    def __init__(self, path: Path) -> None:
        self.answer: Any = [WEB1]
        self.events_error: tuple[str, str] | None = None
        self.requests: list[tuple[str, float]] = []
        self.followers: list[socket.socket] = []
        self.hung_up = 0
        self.lock = threading.Lock()
        super().__init__(str(path), _Answer)
        self.thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def count(self, op: str) -> int:
        with self.lock:
            return sum(1 for name, _ in self.requests if name == op)

    def times(self, op: str) -> list[float]:
        with self.lock:
            return [when for name, when in self.requests if name == op]

    def send(self, *messages: dict[str, Any], spread: float = 0.0) -> None:
        """One write per message, ``spread`` seconds apart: events happen one by one."""
        for index, message in enumerate(messages):
            if index and spread:
                time.sleep(spread)  # not a wait for anything: the pace of the burst
            with self.lock:
                for follower in self.followers:
                    follower.sendall(protocol.encode_message(message))

    def end_streams(self, reason: str) -> None:
        self.send({"v": 1, "event": "closed", "reason": reason, "text": reason})
        with self.lock:
            for follower in self.followers:
                follower.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def record(seq: int) -> dict[str, Any]:
    event = {"seq": seq, "kind": "started", "domain": "web1", "detail": "", "user": None}
    return {"v": 1, "event": "record", "record": event}


class Running:
    """``watch.run`` on an event loop in its own thread, as the prompt runs it."""

    def __init__(self, watch: DomainWatch) -> None:
        self.watch = watch
        self.changes = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        # a daemon: a watch that failed to stop fails its test, not the whole run
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.thread.start()
        wait_until(lambda: self.task, 5, "the watch never started")

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.create_task(self.watch.run(self._changed))
        try:
            await self.task
        except asyncio.CancelledError:
            pass

    def _changed(self) -> None:
        self.changes += 1

    def call(self, action: Callable[[], None]) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(action)

    def stop(self) -> None:
        """As the shell leaves: cancel ``run``, wait for it, ``close``."""
        assert self.loop is not None and self.task is not None
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(5)
        assert not self.thread.is_alive(), "the watch did not stop"
        self.watch.close()


@pytest.fixture
def helper(tmp_path: Path) -> Iterator[FakeHelper]:
    fake = FakeHelper(tmp_path / "helper.sock")
    yield fake
    fake.stop()


@pytest.fixture
def start_watch(helper: FakeHelper) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(refresh_seconds: float = 3600.0, seed: Any = None, timing: Timing = SHORT) -> Running:
        watch = DomainWatch(str(helper.server_address), refresh_seconds, timing)
        if seed is not None:
            watch.seed(seed)
        started.append(Running(watch))
        return started[-1]

    yield start
    for running in started:
        running.stop()


def following(running: Running, helper: FakeHelper) -> bool:
    with helper.lock:
        return running.watch.following and len(helper.followers) == 1


def test_refresh_keeps_the_last_list_and_reports_changes(helper: FakeHelper) -> None:
    watch = DomainWatch(str(helper.server_address), 10.0)
    gone = DomainWatch(str(Path(str(helper.server_address)).parent / "nothing.sock"), 10.0)

    async def scenario() -> list[bool]:
        changes = [await watch.refresh(), await watch.refresh()]
        helper.answer = "garbage"
        changes.append(await watch.refresh())
        changes.append(await gone.refresh())
        return changes

    assert asyncio.run(scenario()) == [True, False, True, True]
    assert watch.snapshot == Snapshot((WEB1,), "the helper sent a malformed domain list")
    assert watch.names() == ["web1"]
    assert gone.snapshot.domains is None
    assert "cannot reach the vpsshell helper" in str(gone.snapshot.error)
    assert helper.count("list") == 3


def test_interval_fast_while_something_changes_slow_while_events_flow() -> None:
    watch = DomainWatch("/nonexistent", 10.0)
    watch.seed([{"name": "web1", "state": "running"}])
    assert watch.interval() == 10.0  # no events: refresh_seconds
    watch.following = True
    assert watch.interval() == 60.0  # events: the safety net, at least a minute
    watch.seed([{"name": "web1", "state": "starting"}])
    assert watch.interval() == 1.0  # not every change of state is an event
    watch.seed([{"name": "web1", "state": "running"}])
    watch.poke()
    assert watch.interval() == 60.0  # after a command, its events say what changed
    watch.following = False
    assert watch.interval() == 1.0  # without them, poll quickly for a while
    slow = DomainWatch("/nonexistent", 300.0)
    slow.following = True
    assert slow.interval() == 300.0  # a longer refresh_seconds is kept


def test_backoff_doubles_up_to_the_maximum() -> None:
    assert retry_delays(Timing()) == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0]


def test_a_burst_of_events_gives_one_list(
    helper: FakeHelper, start_watch: Callable[..., Running]
) -> None:
    running = start_watch(seed=[WEB1])
    wait_until(lambda: following(running, helper), 5, "the watch follows events")
    # the stream opened: one list for what it may have missed, and nothing more
    wait_until(lambda: helper.count("list") == 1, 5, "the list after the stream opened")
    helper.answer = [{"name": "web1", "state": "running"}]
    helper.send(*(record(seq) for seq in range(5)), spread=0.02)  # 0.08 s < SHORT.burst
    wait_until(lambda: running.watch.snapshot.domains == (helper.answer[0],), 5, "web1 running")
    helper.answer = [{"name": "web1", "state": "crashed"}]
    helper.send(record(5))
    wait_until(lambda: running.watch.snapshot.domains == (helper.answer[0],), 5, "web1 crashed")
    # one list per burst, none per event, and none by the clock (refresh_seconds is an hour)
    assert helper.count("list") == 3
    assert helper.count("events") == 1


def test_poke_refreshes_at_once(helper: FakeHelper, start_watch: Callable[..., Running]) -> None:
    running = start_watch(seed=[WEB1])
    wait_until(lambda: helper.count("list") == 1, 5, "the list after the stream opened")
    helper.answer = [{"name": "web1", "state": "running"}]
    running.call(running.watch.poke)
    wait_until(lambda: running.watch.snapshot.domains == (helper.answer[0],), 5, "the refresh")


def test_a_helper_without_events_is_polled_every_refresh_seconds(
    helper: FakeHelper, start_watch: Callable[..., Running]
) -> None:
    helper.events_error = ("usage", "unknown operation")
    running = start_watch(refresh_seconds=0.2)
    wait_until(lambda: helper.count("list") >= 4, 5, "polling")
    lists = helper.times("list")
    assert all(later - earlier >= 0.19 for earlier, later in zip(lists, lists[1:], strict=False))
    assert not running.watch.following
    assert helper.count("events") == 1  # refused for good: not asked again


def test_a_stream_that_ends_falls_back_to_polling_and_reopens_with_backoff(
    helper: FakeHelper, start_watch: Callable[..., Running]
) -> None:
    running = start_watch(refresh_seconds=0.5, seed=[WEB1])
    wait_until(lambda: following(running, helper), 5, "the watch follows events")
    wait_until(lambda: helper.count("list") == 1, 5, "the list after the stream opened")
    helper.events_error = ("temporary", "too many requests; slow down and try again")
    helper.answer = [{"name": "web1", "state": "running"}]
    helper.end_streams("helper-stopping")
    # at once: a list (the helper may come back with other states), then one every 0.5 s
    wait_until(lambda: running.watch.snapshot.domains == (helper.answer[0],), 5, "a refresh")
    assert not running.watch.following
    wait_until(lambda: helper.count("events") >= 6, 10, "attempts to reopen the stream")
    attempts = helper.times("events")
    gaps = [later - earlier for earlier, later in zip(attempts[1:], attempts[2:], strict=False)]
    for gap, delay in zip(gaps, [0.2, 0.4, 0.4], strict=False):
        assert gap >= delay * 0.95, (gaps, "the waits double up to the maximum")
    assert helper.count("list") >= 3  # polling while the stream is down
    helper.events_error = None
    wait_until(lambda: following(running, helper), 5, "the stream is back")
    assert running.watch.interval() == 3600.0  # polling only as the safety net again
    helper.answer = [{"name": "web1", "state": "shutoff"}]
    helper.send(record(1))
    wait_until(lambda: running.watch.snapshot.domains == (helper.answer[0],), 5, "a refresh")


def test_stopping_leaves_no_connection_or_thread(
    helper: FakeHelper, start_watch: Callable[..., Running]
) -> None:
    threads = threading.active_count()
    running = start_watch(seed=[WEB1])
    wait_until(lambda: following(running, helper), 5, "the watch follows events")
    running.stop()
    wait_until(lambda: helper.hung_up == 1, 5, "the stream's connection closed")
    wait_until(lambda: threading.active_count() == threads, 5, "threads left behind")


def poke_and_leave(running: Running) -> None:
    """The last command's poke, and then the shell leaving, in one turn of the loop."""
    assert running.task is not None
    running.watch.poke()
    running.task.cancel()


def test_a_poke_as_the_shell_leaves_does_not_keep_it(
    helper: FakeHelper, start_watch: Callable[..., Running]
) -> None:
    for _ in range(20):  # the wake and the cancellation must land together: try a few times
        running = start_watch(seed=[WEB1])
        wait_until(partial(following, running, helper), 5, "the watch follows events")
        running.call(partial(poke_and_leave, running))
        running.thread.join(5)
        assert not running.thread.is_alive(), "the watch kept the shell from leaving"
