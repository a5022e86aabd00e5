"""The prompt and the bottom toolbar of the interactive shell, as prompt_toolkit fragments.

Pure functions of the session's state and the latest ``watch.Snapshot``: the caller redraws
them whenever the snapshot changes. Everything taken from the helper (names, states, hosts,
error messages) passes through ``render.inert`` first; fragments are plain text, never markup.
"""

from __future__ import annotations

from typing import Any

from prompt_toolkit.formatted_text import StyleAndTextTuples

from vpsshell.shell.render import STATE_COLOURS, format_uptime, inert
from vpsshell.shell.watch import Snapshot

Fragments = StyleAndTextTuples

STYLE = {
    "prompt.user": "fg:ansigreen bold",
    "prompt.domain": "fg:ansicyan bold",
    "bottom-toolbar": "noreverse bg:ansiblack fg:ansiwhite",
    "toolbar.name": "bold",
    "toolbar.dim": "fg:ansibrightblack",
    "toolbar.error": "fg:ansired bold",
    **{
        f"state.{state}": f"fg:ansi{colour.replace('_', '')} bold"
        for state, colour in STATE_COLOURS.items()
    },
}


def prompt_message(user: str, domain: str | None) -> Fragments:
    fragments: Fragments = [("class:prompt.user", inert(user)), ("", "@vpsshell")]
    if domain:
        fragments += [("", ":"), ("class:prompt.domain", inert(domain))]
    fragments.append(("", "> "))
    return fragments


def _state(domain: dict[str, Any]) -> tuple[str, str]:
    state = inert(domain.get("state", "?"))
    return (f"class:state.{state}" if state in STATE_COLOURS else "", state)


def bottom_toolbar(snapshot: Snapshot, current: str | None) -> Fragments:
    """One line: the current domain's state, or a summary of all the caller's domains."""
    if snapshot.domains is None:
        if snapshot.error:
            return [("class:toolbar.error", f" {inert(snapshot.error)}")]
        return [("class:toolbar.dim", " fetching your domains...")]
    fragments: Fragments = []
    if current is not None:
        found = next((d for d in snapshot.domains if d.get("name") == current), None)
        if found is None:
            fragments = [("class:toolbar.name", f" {inert(current)}"), ("", ": not listed")]
        else:
            fragments = [("class:toolbar.name", f" {inert(current)}"), ("", "  "), _state(found)]
            if found.get("uptime_seconds") is not None:
                fragments.append(("", f"  up {format_uptime(found.get('uptime_seconds'))}"))
            fragments.append(
                (
                    "class:toolbar.dim",
                    f"  | {inert(found.get('vcpus', '?'))} vcpu,"
                    f" {inert(found.get('memory_mib', '?'))} MiB"
                    f" | host {inert(found.get('host', '?'))}",
                )
            )
    else:
        counts: dict[str, int] = {}
        for domain in snapshot.domains:
            state = inert(domain.get("state", "?"))
            counts[state] = counts.get(state, 0) + 1
        total = len(snapshot.domains)
        fragments.append(("", f" {total} domain{'' if total == 1 else 's'}"))
        for index, (state, count) in enumerate(sorted(counts.items())):
            fragments.append(("", ", " if index else ": "))
            fragments.append(("", f"{count} "))
            fragments.append(_state({"state": state}))
        fragments.append(("class:toolbar.dim", "  ('use DOMAIN' picks one)"))
    if snapshot.error:
        fragments.append(("class:toolbar.error", f"  [{inert(snapshot.error)}]"))
    return fragments
