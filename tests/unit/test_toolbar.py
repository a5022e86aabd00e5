"""The prompt and the toolbar: built from the latest snapshot, with outside strings inert."""

from __future__ import annotations

from typing import Any

from vpsshell.shell.toolbar import bottom_toolbar, prompt_message
from vpsshell.shell.watch import Snapshot


def text(fragments: list[Any]) -> str:
    return "".join(fragment[1] for fragment in fragments)


def domain(name: str, state: str, **extra: Any) -> dict[str, Any]:
    base = {"name": name, "state": state, "vcpus": 1, "memory_mib": 512, "host": "node1"}
    base["uptime_seconds"] = 62 if state == "running" else None
    return {**base, **extra}


def safe(value: str) -> bool:
    return value.isprintable() and "\x1b" not in value


def test_prompt_shows_user_and_current_domain() -> None:
    assert text(prompt_message("alice", None)) == "alice@vpsshell> "
    assert text(prompt_message("alice", "web1")) == "alice@vpsshell:web1> "


def test_toolbar_shows_the_current_domains_state_and_follows_changes() -> None:
    before = Snapshot((domain("web1", "shutoff"), domain("web2", "running")))
    after = Snapshot((domain("web1", "running"), domain("web2", "running")))
    assert "web1  shutoff" in text(bottom_toolbar(before, "web1"))
    line = text(bottom_toolbar(after, "web1"))
    assert "web1  running" in line and "up 1m 2s" in line and "512 MiB" in line
    assert ("class:state.running", "running") in bottom_toolbar(after, "web1")


def test_toolbar_summarises_all_domains_without_a_current_one() -> None:
    snapshot = Snapshot((domain("a", "running"), domain("b", "shutoff"), domain("c", "shutoff")))
    assert "3 domains: 1 running, 2 shutoff" in text(bottom_toolbar(snapshot, None))


def test_toolbar_before_the_first_answer_and_on_errors() -> None:
    assert "fetching" in text(bottom_toolbar(Snapshot(), None))
    assert "helper gone" in text(bottom_toolbar(Snapshot(None, "helper gone"), None))
    stale = text(bottom_toolbar(Snapshot((domain("web1", "running"),), "lost it"), "web1"))
    assert "web1  running" in stale and "lost it" in stale
    assert "not listed" in text(bottom_toolbar(Snapshot(()), "web9"))


def test_outside_strings_are_inert_in_prompt_and_toolbar() -> None:
    hostile = "evil\x1b]0;pwned\x07\u202e"
    snapshot = Snapshot(
        (domain(hostile, "running\x1b[5m", host="h\x9b31m", vcpus="\x1b[2J", memory_mib="\u2066"),),
        "boom\x1b[31m",
    )
    for fragments in (
        bottom_toolbar(snapshot, hostile),
        bottom_toolbar(snapshot, None),
        prompt_message("user\x1b[1m", hostile),
    ):
        rendered = text(fragments)
        assert safe(rendered), rendered
        assert "\\x1b" in rendered
