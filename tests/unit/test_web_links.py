"""One-time console links (``web_tokens.ConsoleLinks``) and what vpsshell-web passes on from a
browser (``relay.browser_text``), without a helper or a browser."""

from __future__ import annotations

import asyncio
import json

import pytest

from vpsshell import protocol
from vpsshell.daemon.config import Limits
from vpsshell.daemon.peer import Caller
from vpsshell.daemon.web_tokens import ConsoleLinks, MintedConsole, RedeemRefused, token_digest
from vpsshell.errors import ActionFailed, TemporaryFailure

ALICE = Caller(1001, 1001, 42, "alice", ("alice", "team"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def links(clock: Clock, expired: list[MintedConsole], **limits: int) -> ConsoleLinks:
    return ConsoleLinks("https://console.example/", Limits(**limits), expired.append, clock)


def token_of(url: str) -> str:
    base, token = url.split("#")
    assert base == "https://console.example/"
    return token


def test_a_link_works_once_for_whom_it_was_minted_and_only_its_hash_is_kept() -> None:
    async def scenario() -> None:
        expired: list[MintedConsole] = []
        store = links(Clock(), expired)
        url, minted = store.mint(ALICE, "web1", "watch")
        token = token_of(url)
        assert len(token) == 43 and token not in repr(store.__dict__)
        assert minted.digest == token_digest(token)
        used = store.redeem(token)
        assert (used.caller, used.domain, used.mode, used.takeover) == (
            ALICE,
            "web1",
            "watch",
            False,
        )
        with pytest.raises(RedeemRefused) as again:
            store.redeem(token)
        assert again.value.reason == "used" and "already used" in again.value.message
        assert expired == []

    asyncio.run(scenario())


@pytest.mark.parametrize("forged", [None, 7, "", "short", "x" * 43, "é" * 43, "A" * 44])
def test_anything_but_a_minted_token_is_not_valid(forged: object) -> None:
    async def scenario() -> None:
        store = links(Clock(), [])
        url, _ = store.mint(ALICE, "web1", "write")
        with pytest.raises(RedeemRefused) as refused:
            store.redeem(forged)
        assert refused.value.reason == "invalid"
        assert store.redeem(token_of(url)).domain == "web1"  # a forgery spends nothing

    asyncio.run(scenario())


def test_a_link_expires_on_its_timer_or_when_it_is_late() -> None:
    async def scenario() -> None:
        clock, expired = Clock(), []
        store = links(clock, expired)
        late_url, late = store.mint(ALICE, "web1", "write", seconds=60)
        clock.now += 61  # its timer has not fired yet: the clock still says expired
        with pytest.raises(RedeemRefused) as refused:
            store.redeem(token_of(late_url))
        assert refused.value.reason == "expired" and expired == [late]
        quick_url, quick = store.mint(ALICE, "web2", "write", seconds=1)
        await asyncio.sleep(1.2)
        assert expired == [late, quick] and store.pending() == 0
        with pytest.raises(RedeemRefused) as refused:
            store.redeem(token_of(quick_url))
        assert refused.value.reason == "expired"

    asyncio.run(scenario())


def test_lifetimes_and_unused_links_per_user_are_bounded() -> None:
    async def scenario() -> None:
        clock = Clock()
        store = links(clock, [], web_tokens_per_user=2, web_token_max_seconds=30)
        _, first = store.mint(ALICE, "web1", "write", seconds=3600)
        assert first.expires == clock.now + 30
        store.mint(ALICE, "web1", "watch")
        with pytest.raises(TemporaryFailure):
            store.mint(ALICE, "web1", "watch")
        store.mint(ALICE._replace(uid=1002, user="bob"), "web1", "watch")  # bob has his own
        store.close()

    asyncio.run(scenario())


def test_no_web_url_means_no_links() -> None:
    async def scenario() -> None:
        store = ConsoleLinks("", Limits(), lambda minted: None)
        with pytest.raises(ActionFailed):
            store.mint(ALICE, "web1", "write")

    asyncio.run(scenario())


def test_only_redeem_and_the_session_messages_pass_from_a_browser() -> None:
    from vpsshell.web.relay import browser_text

    assert browser_text(json.dumps({"op": "detach", "extra": 1})) == protocol.detach()
    assert browser_text(json.dumps({"op": "pong"})) == protocol.pong()
    assert browser_text(json.dumps({"op": "resize", "rows": 40, "cols": 120})) == (
        protocol.resize(40, 120)
    )
    redeem = browser_text(json.dumps({"op": "redeem", "token": "t", "rows": 1, "cols": 2}))
    assert redeem == {"op": "redeem", "token": "t", "rows": 1, "cols": 2}
    for untrusted in [
        "not json",
        "[]",
        json.dumps({"op": "console", "domain": "web2"}),
        json.dumps({"op": "resize", "rows": 0, "cols": 80}),
        json.dumps({"op": "resize", "rows": True, "cols": 80}),
        json.dumps({"op": "pong", "pad": "x" * 2000}),
    ]:
        assert browser_text(untrusted) is None, untrusted
