"""The closed command grammar: ``VERB [ARGS...] [--OPTIONS]``, validated before anything else.

A line is refused (``UsageError``, exit 64) if it is too long, holds any character outside
printable ASCII (control characters, line or paragraph separators, look-alike letters), names a
verb that does not exist, or passes an argument where a domain is expected that is not a domain
name (in particular anything starting with ``-``). There is no quoting, no expansion and no
escape: what cannot be said in this grammar cannot reach the helper.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from vpsshell.checks import is_domain_name
from vpsshell.errors import UsageError
from vpsshell.shell.escapes import parse_escape
from vpsshell.since import parse_since

MAX_LINE_CHARS = 1024
MAX_WORDS = 16
_OPTION_RE = re.compile(r"--([a-z][a-z-]*)(?:=(.*))?\Z")

# value kinds of options
FLAG = "flag"  # --json
SECONDS = "seconds"  # --wait or --wait=N
COUNT = "count"  # --lines=N
TIME = "time"  # --since=2026-12-05T10:00:00Z or --since=-10m (checked, passed on as written)
ESCAPE = "escape"  # --escape=^A, --escape=~ or --escape=none: the character's code (0: none)


class Option(NamedTuple):
    name: str  # without the leading dashes
    kind: str
    help: str
    max_value: int = 0


class Verb(NamedTuple):
    name: str
    summary: str
    domain: str = "none"  # none | optional | required
    options: tuple[Option, ...] = ()
    aliases: tuple[str, ...] = ()
    interactive_only: bool = False
    extra_arg: str = ""  # name of one extra positional argument (e.g. KEY), if any
    extra_words: bool = False  # the extra argument is every word left (keys add KEY LINE)

    def usage(self) -> str:
        words = [self.name]
        if self.domain == "required":
            words.append("DOMAIN")
        elif self.domain == "optional":
            words.append("[DOMAIN]")
        if self.extra_arg:
            words.append(self.extra_arg)
        for option in self.options:
            if option.kind == FLAG:
                words.append(f"[--{option.name}]")
            elif option.kind == SECONDS:
                words.append(f"[--{option.name}[=SECONDS]]")
            elif option.kind == TIME:
                words.append(f"[--{option.name}=TIME]")
            elif option.kind == ESCAPE:
                words.append(f"[--{option.name}=CHAR]")
            else:
                words.append(f"[--{option.name}=N]")
        return " ".join(words)


class ParsedCommand(NamedTuple):
    verb: Verb
    domain: str | None
    extra: str | None
    options: dict[str, bool | int | str]


def check_characters(line: str) -> None:
    """Refuse over-long lines and every character that is not printable ASCII."""
    if len(line) > MAX_LINE_CHARS:
        raise UsageError(f"command too long ({len(line)} characters; at most {MAX_LINE_CHARS})")
    for position, char in enumerate(line, start=1):
        if not " " <= char <= "~":
            raise UsageError(
                f"rejected character U+{ord(char):04X} at position {position}"
                " (only printable ASCII is accepted)"
            )


def _option_value(verb: Verb, option: Option, raw: str | None) -> bool | int | str:
    if option.kind == FLAG:
        if raw is not None:
            raise UsageError(f"{verb.name}: --{option.name} takes no value")
        return True
    if raw is None:
        if option.kind == SECONDS:
            return -1  # "use the default"
        example = "^A" if option.kind == ESCAPE else "N"
        raise UsageError(f"{verb.name}: --{option.name} needs a value (--{option.name}={example})")
    if option.kind == ESCAPE:
        try:
            return parse_escape(raw)
        except ValueError as exc:
            raise UsageError(f"{verb.name}: --{option.name}: {exc}") from None
    if option.kind == TIME:
        parse_since(raw)  # raises UsageError for anything but a time
        return raw
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise UsageError(f"{verb.name}: --{option.name}: {raw!r} is not a whole number")
    value = int(raw)
    if option.max_value and value > option.max_value:
        raise UsageError(f"{verb.name}: --{option.name}: at most {option.max_value}")
    return value


def check_domain(verb: Verb, word: str) -> str:
    if not is_domain_name(word):
        raise UsageError(f"{verb.name}: {word!r} is not a domain name")
    return word


def parse(
    line: str, verbs: dict[str, Verb], default_domain: str | None = None
) -> ParsedCommand | None:
    """Parse one command line; None for a blank line. Raises UsageError."""
    check_characters(line)
    words = line.split()
    if not words:
        return None
    if len(words) > MAX_WORDS:
        raise UsageError(f"too many words (at most {MAX_WORDS})")
    verb = verbs.get(words[0])
    if verb is None:
        raise UsageError(f"unknown command {words[0]!r} (try 'help')")
    options: dict[str, bool | int | str] = {}
    positional: list[str] = []
    by_name = {option.name: option for option in verb.options}
    for word in words[1:]:
        match = _OPTION_RE.match(word)
        if match:
            option = by_name.get(match.group(1))
            if option is None:
                raise UsageError(f"{verb.name}: unknown option {word.split('=')[0]!r}")
            if option.name in options:
                raise UsageError(f"{verb.name}: --{option.name} given twice")
            options[option.name] = _option_value(verb, option, match.group(2))
        elif word.startswith("-"):
            raise UsageError(f"{verb.name}: {word!r} is not a domain name or option")
        else:
            positional.append(word)
    domain: str | None = None
    extra: str | None = None
    wanted = (1 if verb.domain != "none" else 0) + (1 if verb.extra_arg else 0)
    if verb.domain == "none":
        if verb.extra_words and positional:
            extra, positional = " ".join(positional), []
        elif verb.extra_arg and positional:
            extra = positional.pop(0)
    else:
        if len(positional) < wanted and default_domain is not None:
            positional.insert(0, default_domain)
        if positional:
            domain = check_domain(verb, positional.pop(0))
        elif verb.domain == "required":
            raise UsageError(f"usage: {verb.usage()}")
        if verb.extra_arg:
            if not positional:
                raise UsageError(f"usage: {verb.usage()}")
            extra = positional.pop(0)
    if positional:
        raise UsageError(f"{verb.name}: unexpected argument {positional[0]!r}")
    return ParsedCommand(verb, domain, extra, options)
