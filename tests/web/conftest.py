"""Fixtures of the browser tests: the web service's user, xterm.js, a helper with a web
console in front of it, and headless browsers closed after each test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import DEFAULT_POLICY, Helper
from website import (
    WebConsole,
    browser,
    ensure_web_user,
    fetch_xterm,
    free_port,
    missing_browser,
    remove_web_user,
    web_helper_config,
)


@pytest.fixture(scope="session")
def web_user(tenants: None) -> Iterator[None]:
    why = missing_browser() or fetch_xterm()
    if why is not None:
        pytest.skip(why)
    ensure_web_user()
    yield
    if not os.environ.get("VPSSHELL_KEEP_USERS"):
        remove_web_user()


@pytest.fixture
def web(open_dir: Path, web_user: None) -> Iterator[WebConsole]:
    """A helper (sim backend, the default test policy, web1 started) and vpsshell-web."""
    from harness import start_and_wait

    port = free_port()
    web_socket = open_dir / "helper" / "run" / "web.sock"
    helper = Helper(
        open_dir / "helper", DEFAULT_POLICY, extra_config=web_helper_config(web_socket, port)
    ).start()
    site = WebConsole(open_dir / "web", helper, port, web_socket)
    try:
        site.start()
        start_and_wait(helper, "vpst-alice", "web1")
        yield site
    finally:
        site.stop()
        helper.stop()


@pytest.fixture
def browsers() -> Iterator[Callable[[], Any]]:
    """Opens headless browsers; every one is closed after the test."""
    opened: list[Any] = []

    def open_one() -> Any:
        driver = browser()
        opened.append(driver)
        return driver

    yield open_one
    for driver in opened:
        driver.quit()
