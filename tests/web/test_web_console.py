"""The console in a browser: headless Chromium through Selenium against a real vpsshelld and a
real vpsshell-web (running as its own user), with links minted by tenants and by the admin.

What a tenant sees in the page is read from the terminal's rows; every wait is for something to
show up (``wait_until``), never a fixed sleep.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import console_as, run, wait_until
from website import WebConsole, keep_screenshot, page_state, screen, text_of, type_keys

pytestmark = pytest.mark.root

PROMPT = "root@web1:~$"


def open_link(driver: Any, url: str) -> None:
    driver.get(url)
    wait_until(lambda: page_state(driver) in ("attached", "refused"), 20, "the page never settled")


def see(driver: Any, text: str, timeout: float = 15) -> str:
    return str(wait_until(lambda: text in screen(driver) and screen(driver), timeout, text))


def log_in(driver: Any) -> None:
    type_keys(driver, "\n")
    see(driver, "login:")
    type_keys(driver, "root\n")
    see(driver, "Password:")
    type_keys(driver, "secret\n")
    see(driver, PROMPT)


def test_a_minted_link_shows_the_replayed_console_and_runs_what_is_typed(
    web: WebConsole, browsers: Callable[[], Any], tmp_path: Path
) -> None:
    url = web.mint("vpst-alice", "web1")
    assert url.startswith(web.url + "#")
    driver = browsers()
    open_link(driver, url)
    assert page_state(driver) == "attached"
    assert "#" not in driver.current_url  # the token left the address bar and the history
    assert (text_of(driver, "domain"), text_of(driver, "user")) == ("web1", "vpst-alice")
    assert text_of(driver, "mode") == "writer"
    see(driver, "Linux version")  # the boot log, replayed from the scrollback
    log_in(driver)
    type_keys(driver, "echo grüße-from-the-browser\n")
    wait_until(
        lambda: screen(driver).count("grüße-from-the-browser") >= 2, 15, "the echo's output"
    )
    keep_screenshot(driver, tmp_path, "web-console.png")
    attached = [r for r in web.helper.audit() if r.get("action") == "console"]
    assert attached and attached[-1]["via"] == "web" and attached[-1]["user"] == "vpst-alice"
    redeemed = [r for r in web.helper.audit() if r.get("action") == "web-redeem"]
    assert [(r["decision"], r["for_user"], r["domain"]) for r in redeemed] == [
        ("allow", "vpst-alice", "web1")
    ]
