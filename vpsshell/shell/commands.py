"""The verb registry shared by ``vpsshell -c`` and the interactive shell.

Each verb is declared once with ``@command(...)``: its grammar (domain argument, options,
aliases), its one-line help, and the handler that asks the helper and returns data. Help text
and completion are generated from this registry. Handlers never print; they return ``Output``
for ``render`` to show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from vpsshell import __version__
from vpsshell.checks import is_sysrq_key
from vpsshell.errors import UsageError
from vpsshell.shell.environment import Environment
from vpsshell.shell.grammar import (
    COUNT,
    ESCAPE,
    FLAG,
    SECONDS,
    TIME,
    Option,
    ParsedCommand,
    Verb,
)


class Output(NamedTuple):
    """What a handler returns: a kind that ``render`` knows, and plain data."""

    kind: str
    data: Any


class Context(Protocol):
    """What handlers may use: the helper connection and the session's state."""

    current_domain: str | None
    interactive: bool
    env: Environment  # only to read what a verb takes from stdin (keys add)

    def call(self, op: str, args: dict[str, Any], *, timeout: float = ...) -> Any: ...

    def attach_console(self, op: str, args: dict[str, Any], mode: str, escape: int) -> int: ...

    def follow_events(self, args: dict[str, Any], *, as_json: bool) -> int: ...

    def download(self, op: str, args: dict[str, Any]) -> int: ...


Handler = Callable[[Context, ParsedCommand], Output]

VERBS: dict[str, Verb] = {}  # every name and alias -> its Verb
HANDLERS: dict[str, Handler] = {}  # canonical name -> handler
ORDER: list[str] = []  # canonical names in help order

JSON = Option("json", FLAG, "print machine-readable JSON")


def command(
    name: str,
    summary: str,
    *,
    domain: str = "none",
    options: tuple[Option, ...] = (),
    aliases: tuple[str, ...] = (),
    interactive_only: bool = False,
    extra_arg: str = "",
    extra_words: bool = False,
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        verb = Verb(
            name, summary, domain, options, aliases, interactive_only, extra_arg, extra_words
        )
        for word in (name, *aliases):
            VERBS[word] = verb
        HANDLERS[name] = handler
        ORDER.append(name)
        return handler

    return register


def _domain_request(ctx: Context, op: str, parsed: ParsedCommand) -> Output:
    result = ctx.call(op, {"domain": parsed.domain})
    return Output("action", result)


@command("list", "domains you may see, with state", options=(JSON,))
def cmd_list(ctx: Context, parsed: ParsedCommand) -> Output:
    return Output("domains", ctx.call("list", {}))


@command("status", "state, vcpus, memory, uptime and host", domain="optional", options=(JSON,))
def cmd_status(ctx: Context, parsed: ParsedCommand) -> Output:
    if parsed.domain is None:
        return Output("domains", ctx.call("list", {}))
    return Output("status", ctx.call("status", {"domain": parsed.domain}))


@command("start", "boot a domain", domain="required", aliases=("boot",))
def cmd_start(ctx: Context, parsed: ParsedCommand) -> Output:
    return _domain_request(ctx, "start", parsed)


WAIT = Option("wait", SECONDS, "wait until the domain is off (default 60 s)", max_value=600)
FORCE = Option("force", FLAG, "power off if it is still running after the wait")


@command(
    "shutdown", "ask a domain to shut down gracefully", domain="required", options=(WAIT, FORCE)
)
def cmd_shutdown(ctx: Context, parsed: ParsedCommand) -> Output:
    wait = parsed.options.get("wait")
    force = bool(parsed.options.get("force"))
    args: dict[str, Any] = {"domain": parsed.domain, "force": force}
    if wait is not None or force:
        args["wait"] = None if wait in (None, -1) else wait
    timeout = 60.0 + (600 if "wait" in args else 0)
    return Output("action", ctx.call("shutdown", args, timeout=timeout))


@command("reboot", "reboot a domain gracefully", domain="required")
def cmd_reboot(ctx: Context, parsed: ParsedCommand) -> Output:
    return _domain_request(ctx, "reboot", parsed)


@command(
    "poweroff",
    "hard stop, no guest sync (like pulling the plug)",
    domain="required",
    aliases=("destroy",),
)
def cmd_poweroff(ctx: Context, parsed: ParsedCommand) -> Output:
    return _domain_request(ctx, "poweroff", parsed)


@command("reset", "hard reset (like pressing the reset button)", domain="required")
def cmd_reset(ctx: Context, parsed: ParsedCommand) -> Output:
    return _domain_request(ctx, "reset", parsed)


@command(
    "use", "make DOMAIN the default for later commands", domain="required", interactive_only=True
)
def cmd_use(ctx: Context, parsed: ParsedCommand) -> Output:
    status = ctx.call("status", {"domain": parsed.domain})
    ctx.current_domain = status["name"]
    return Output("text", f"using {status['name']}")


@command("whoami", "who the helper says you are", options=(JSON,))
def cmd_whoami(ctx: Context, parsed: ParsedCommand) -> Output:
    return Output("whoami", ctx.call("whoami", {}))


@command("help", "list commands, or explain one", extra_arg="[VERB]")
def cmd_help(ctx: Context, parsed: ParsedCommand) -> Output:
    if parsed.extra is None:
        # every verb, so that ``ssh host help`` shows what the login shell offers too
        return Output(
            "help",
            [
                {
                    **_verb_help(VERBS[name]),
                    "here": ctx.interactive or not VERBS[name].interactive_only,
                }
                for name in ORDER
            ],
        )
    verb = VERBS.get(parsed.extra)
    if verb is None:
        raise UsageError(f"help: unknown command {parsed.extra!r}")
    return Output("verb-help", _verb_help(verb))


def _verb_help(verb: Verb) -> dict[str, Any]:
    """What ``help`` says of one verb, as data for ``render``."""
    return {
        "usage": verb.usage(),
        "summary": verb.summary,
        "aliases": list(verb.aliases),
        "options": [(f"--{option.name}", option.help) for option in verb.options],
        "interactive_only": verb.interactive_only,
    }


@command("version", "versions of this shell and of the helper")
def cmd_version(ctx: Context, parsed: ParsedCommand) -> Output:
    helper = ctx.call("version", {})
    return Output("version", {"shell": __version__, **helper})


@command("exit", "leave the shell", aliases=("quit",), interactive_only=True)
def cmd_exit(ctx: Context, parsed: ParsedCommand) -> Output:
    return Output("exit", None)


@command("clear", "clear the screen (Ctrl-L does too)", interactive_only=True)
def cmd_clear(ctx: Context, parsed: ParsedCommand) -> Output:
    return Output("clear", None)


WATCH = Option("watch", FLAG, "watch only: see the console, type nothing")
TAKEOVER = Option("takeover", FLAG, "take the console over from its current writer")
REPLAY = Option(
    "replay", COUNT, "replay this many bytes of recent output (default 16384)", max_value=1 << 20
)
NO_REPLAY = Option("no-replay", FLAG, "do not replay recent output")
ESCAPE_CHAR = Option(
    "escape", ESCAPE, "escape character at the start of a line: ^A, ~ (default) or none"
)


@command(
    "console",
    "attach to the serial console (Ctrl-] detaches, ~? lists escapes)",
    domain="required",
    options=(WATCH, TAKEOVER, REPLAY, NO_REPLAY, ESCAPE_CHAR),
)
def cmd_console(ctx: Context, parsed: ParsedCommand) -> Output:
    options = parsed.options
    if "replay" in options and "no-replay" in options:
        raise UsageError("console: --replay and --no-replay exclude each other")
    if "watch" in options and "takeover" in options:
        raise UsageError("console: --watch and --takeover exclude each other")
    args: dict[str, Any] = {"domain": parsed.domain}
    if "no-replay" in options:
        args["replay"] = 0
    elif "replay" in options:
        args["replay"] = options["replay"]
    mode = "watch" if options.get("watch") else "write"
    if mode == "write":
        args["takeover"] = bool(options.get("takeover"))
    if "escape" in options:
        escape = int(options["escape"])
    else:  # the admin's default, from the client config
        from vpsshell.shell.escapes import parse_escape
        from vpsshell.shell.settings import load_settings

        escape = parse_escape(load_settings()[0].console_escape)
    return Output(
        "ended", ctx.attach_console("watch" if mode == "watch" else "console", args, mode, escape)
    )


WEB_WATCH = Option("watch", FLAG, "a link to watch only: see the console, type nothing")
WEB_TAKEOVER = Option("takeover", FLAG, "the page takes the console over from its writer")


@command(
    "webconsole",
    "a one-time https link to DOMAIN's console in a browser (valid 60 s, once)",
    domain="required",
    options=(WEB_WATCH, WEB_TAKEOVER, JSON),
)
def cmd_webconsole(ctx: Context, parsed: ParsedCommand) -> Output:
    options = parsed.options
    if "watch" in options and "takeover" in options:
        raise UsageError("webconsole: --watch and --takeover exclude each other")
    watch = bool(options.get("watch"))
    args: dict[str, Any] = {"domain": parsed.domain}
    if options.get("takeover"):
        args["takeover"] = True
    link = ctx.call("webwatch" if watch else "webconsole", args)
    what = "watch" if watch else "console"
    link["message"] = (
        f"{link.get('domain')} {what} in a browser, within {link.get('expires_in')} s, once: "
        f"{link.get('url')}"
    )
    return Output("action", link)


LINES = Option("lines", COUNT, "how many lines (default 100, at most 10000)", max_value=10000)
TIMESTAMPS = Option("timestamps", FLAG, "show when each line arrived, and who attached")
LOG_SINCE = Option("since", TIME, "only output since TIME (2026-12-05T10:00:00Z, -10m, -2h)")


@command(
    "log",
    "recent console output of a domain",
    domain="required",
    options=(LINES, TIMESTAMPS, LOG_SINCE, JSON),
)
def cmd_log(ctx: Context, parsed: ParsedCommand) -> Output:
    args: dict[str, Any] = {"domain": parsed.domain}
    args.update((name, value) for name, value in parsed.options.items() if name != "json")
    if args.get("lines") == 0:
        raise UsageError("log: --lines must be at least 1")
    return Output("log", ctx.call("log", args))


@command(
    "recordings",
    "recorded console sessions of a domain (who, when, how long)",
    domain="required",
    options=(JSON,),
)
def cmd_recordings(ctx: Context, parsed: ParsedCommand) -> Output:
    return Output("recordings", ctx.call("recordings", {"domain": parsed.domain}))


@command(
    "recording",
    "print a recorded console session as asciicast v2 (save it; asciinema play FILE)",
    extra_arg="ID",
)
def cmd_recording(ctx: Context, parsed: ParsedCommand) -> Output:
    if not parsed.extra:
        raise UsageError(f"usage: {parsed.verb.usage()}")
    return Output("ended", ctx.download("recording", {"id": parsed.extra}))


@command("sysrq", "send magic SysRq KEY (0-9, a-z) to a domain", domain="required", extra_arg="KEY")
def cmd_sysrq(ctx: Context, parsed: ParsedCommand) -> Output:
    key = parsed.extra or ""
    if not is_sysrq_key(key):
        raise UsageError(f"sysrq: {key!r} is not a SysRq key (one of 0-9 or a-z)")
    return Output("action", ctx.call("sysrq", {"domain": parsed.domain, "key": key}))


FOLLOW = Option("follow", FLAG, "keep showing new events until Ctrl-C")
EVENT_LINES = Option(
    "lines", COUNT, "how many past events (default 100; 0: none, with --follow)", max_value=10000
)
SINCE = Option("since", TIME, "only events since TIME (2026-12-05T10:00:00Z, -10m, -2h, -1d)")


@command(
    "events",
    "lifecycle and console events of your domains",
    domain="optional",
    options=(FOLLOW, EVENT_LINES, SINCE, JSON),
)
def cmd_events(ctx: Context, parsed: ParsedCommand) -> Output:
    args: dict[str, Any] = {}
    if parsed.domain is not None:
        args["domain"] = parsed.domain
    if "lines" in parsed.options:
        args["lines"] = parsed.options["lines"]
    if "since" in parsed.options:
        args["since"] = parsed.options["since"]
    if not parsed.options.get("follow"):
        return Output("events", ctx.call("events", args))
    args["follow"] = True
    return Output("ended", ctx.follow_events(args, as_json=bool(parsed.options.get("json"))))


# the self-service verbs (keys, totp) are declared in a module of their own
from vpsshell.shell import self_service as _self_service  # noqa: E402, F401
