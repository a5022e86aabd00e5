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
    try:
        wait_until(lambda: page_state(driver) in ("attached", "refused"), 20, "page settled")
    except AssertionError as exc:
        logs = driver.get_log("browser")
        raise AssertionError(
            f"the page stayed {page_state(driver)!r}; browser log: {logs}"
        ) from exc


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
    wait_until(lambda: screen(driver).count("grüße-from-the-browser") >= 2, 15, "the echo's output")
    keep_screenshot(driver, tmp_path, "web-console.png")
    attached = [r for r in web.helper.audit() if r.get("action") == "console"]
    assert attached and attached[-1]["via"] == "web" and attached[-1]["user"] == "vpst-alice"
    redeemed = [r for r in web.helper.audit() if r.get("action") == "web-redeem"]
    assert [(r["decision"], r["for_user"], r["domain"]) for r in redeemed] == [
        ("allow", "vpst-alice", "web1")
    ]


def test_a_watcher_sees_the_writers_console_and_cannot_type(
    web: WebConsole, browsers: Callable[[], Any]
) -> None:
    writer, watcher = browsers(), browsers()
    open_link(writer, web.mint("vpst-alice", "web1"))
    log_in(writer)
    open_link(watcher, web.mint("vpst-alice", "web1", "--watch"))
    assert page_state(watcher) == "attached"
    assert text_of(watcher, "mode") == "watching (read-only)"
    type_keys(writer, "echo seen-by-the-watcher\n")
    wait_until(lambda: screen(watcher).count("seen-by-the-watcher") >= 2, 15, "the writer's output")
    type_keys(watcher, "echo typed-by-the-watcher\n")
    type_keys(writer, "echo after-the-watcher-typed\n")
    wait_until(
        lambda: screen(watcher).count("after-the-watcher-typed") >= 2, 15, "the later output"
    )
    assert "typed-by-the-watcher" not in screen(writer)
    assert "typed-by-the-watcher" not in screen(watcher)


def test_a_takeover_over_ssh_is_shown_in_the_browser_with_who_took_over(
    web: WebConsole, browsers: Callable[[], Any]
) -> None:
    driver = browsers()
    open_link(driver, web.mint("vpst-alice", "web1"))
    ssh_console = console_as(web.helper, "vpst-alice", "web1", "--takeover")
    try:
        ssh_console.expect("Press Ctrl-]")
        wait_until(lambda: page_state(driver) == "ended", 15, "the page's console to end")
        assert text_of(driver, "notice") == "console of web1 taken over by vpst-alice"
        assert "taken over by vpst-alice" in screen(driver)
    finally:
        ssh_console.sendcontrol("]")
        ssh_console.close()


def test_a_revoked_grant_closes_the_browsers_console(
    web: WebConsole, browsers: Callable[[], Any]
) -> None:
    driver = browsers()
    open_link(driver, web.mint("vpst-alice", "web1"))
    see(driver, "login:")
    web.helper.write_policy("10-tenants.policy", "allow user:vpst-alice @operator web2\n")
    wait_until(lambda: page_state(driver) == "ended", 15, "the page's console to end")
    assert text_of(driver, "notice") == "access to web1's console ended"
    detached = [r for r in web.helper.audit() if r.get("action") == "console-detach"]
    assert [(r["result"], r.get("via")) for r in detached] == [("revoked", "web")]


def test_the_detach_button_ends_the_session(web: WebConsole, browsers: Callable[[], Any]) -> None:
    from selenium.webdriver.common.by import By

    driver = browsers()
    open_link(driver, web.mint("vpst-alice", "web1"))
    driver.find_element(By.ID, "detach").click()
    wait_until(lambda: page_state(driver) == "ended", 15, "the page's console to end")
    detached = [r for r in web.helper.audit() if r.get("action") == "console-detach"]
    assert [r["result"] for r in detached] == ["detached"]


def refusal(driver: Any) -> tuple[str, str]:
    assert page_state(driver) == "refused"
    return text_of(driver, "refused-title"), text_of(driver, "refused-text")


def test_a_used_link_is_refused_with_a_page_that_says_so(
    web: WebConsole, browsers: Callable[[], Any]
) -> None:
    url = web.mint("vpst-alice", "web1", "--watch")
    first, second = browsers(), browsers()
    open_link(first, url)
    assert page_state(first) == "attached"
    open_link(second, url)
    assert refusal(second)[0] == "This console link was already used"
    refused = [r for r in web.helper.audit() if r.get("action") == "web-redeem"][-1]
    assert (refused["decision"], refused["reason"]) == ("deny", "used")


def test_an_expired_link_is_refused_with_a_page_that_says_so(
    web: WebConsole, browsers: Callable[[], Any]
) -> None:
    link = web.mint_as_admin("vpst-alice", "web1", "--ttl=1")
    wait_until(
        lambda: any(
            r.get("action") == "web-token-expired" and r.get("token") == link["token"]
            for r in web.helper.audit()
        ),
        10,
        "the link to expire",
    )
    driver = browsers()
    open_link(driver, link["url"])
    assert refusal(driver)[0] == "This console link has expired"


def test_a_tampered_or_missing_token_is_refused(
    web: WebConsole, browsers: Callable[[], Any]
) -> None:
    url = web.mint("vpst-alice", "web1")
    base, token = url.split("#")
    driver = browsers()
    open_link(driver, f"{base}#{token[:-1]}{'A' if token[-1] != 'A' else 'B'}")
    assert refusal(driver)[0] == "This is not a valid console link"
    driver.get(base)  # no token at all: nothing is sent to the helper
    wait_until(lambda: page_state(driver) == "refused", 10, "the page to refuse")
    assert "no console link" in refusal(driver)[1]
    another = browsers()  # a new page: a new fragment alone would not load it again
    open_link(another, url)  # the untouched link still works: a forgery does not spend it
    assert page_state(another) == "attached"


def test_links_are_minted_only_for_what_the_policy_allows(web: WebConsole) -> None:
    assert run("vpst-bob", web.helper, "webconsole web4").code == 77  # @viewer: no console
    watch = run("vpst-bob", web.helper, "webconsole web4 --watch")
    assert watch.code == 0 and "https://127.0.0.1" in watch.out
    assert run("vpst-alice", web.helper, "webconsole db1").code == 77
    from harness import vpsshell_admin

    refused = vpsshell_admin(web.helper, "console-url", "vpst-bob", "web4")
    assert refused.code == 77, refused


def test_a_takeover_link_takes_the_console_from_an_ssh_writer(
    web: WebConsole, browsers: Callable[[], Any]
) -> None:
    import pexpect

    ssh_console = console_as(web.helper, "vpst-alice", "web1")
    try:
        ssh_console.expect("Press Ctrl-]")
        driver = browsers()
        open_link(driver, web.mint("vpst-alice", "web1", "--takeover"))
        assert page_state(driver) == "attached" and text_of(driver, "mode") == "writer"
        ssh_console.expect("taken over by vpst-alice")
        ssh_console.expect(pexpect.EOF)
    finally:
        ssh_console.close()
    takeovers = [r for r in web.helper.audit() if r.get("action") == "console"]
    assert takeovers[-1]["console"]["takeover"] is True and takeovers[-1]["via"] == "web"
