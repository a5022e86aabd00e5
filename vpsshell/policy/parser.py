"""Turn policy text into expanded rules and named sets, collecting every error as ``file:line``.

Grammar (one statement per logical line; ``#`` after whitespace starts a comment; a trailing
backslash joins the next physical line, acting as a space)::

    actions @NAME = MEMBER...             MEMBER: action | @actionset   (commas also separate)
    domains @NAME = MEMBER...             MEMBER: domain | @domainset
    allow|deny SUBJECT ACTIONS DOMAINS... [expires=YYYY-MM-DD] [reason="..."] [confirm=...]

SUBJECT is ``user:NAME`` or ``group:NAME``. ACTIONS is one token: a comma list of actions,
``@sets`` or ``*``. DOMAINS is one or more tokens, each a comma list of domains, ``@sets`` or
(deny only) ``*``. Sets are global across the files of one policy and may be used before they
are defined. This module never raises on bad input and never touches the file system: errors
are returned, and bounded (size, count, nesting and expansion limits) so hostile text cannot
make it hang or exhaust memory.
"""

from __future__ import annotations

import datetime as _dt
import gc
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from .model import (
    ALL_ACTIONS,
    BUILTIN_ACTION_SETS,
    CONFIRM_STRENGTH,
    MAX_ERRORS,
    MAX_EXPANSION_WORK,
    MAX_FILE_BYTES,
    MAX_LINE_CHARS,
    MAX_REASON_CHARS,
    MAX_RULES,
    MAX_SET_DEPTH,
    MAX_SET_MEMBERS,
    MAX_SETS,
    OPTION_KEYS,
    SELF_SERVICE_ACTIONS,
    SET_NAME_RE,
    SUBJECT_NAME_RE,
    PolicyError,
    Rule,
    is_domain_name,
)

_WS = " \t"
_WS_RE = re.compile(r"[ \t]*")
_QUOTED_OPTION_RE = re.compile(r'([a-z_]+=)"([^"]*)"')
_BARE_TOKEN_RE = re.compile(r'[^ \t"]+')
_OPTION_PREFIX_RE = re.compile(r"[a-z_]+=")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: A line the tokenizer would split at its spaces and tabs and nothing else: printable ASCII
#: without quotes, ``#`` or backslashes (which need the full tokenizer).
_PLAIN_LINE_RE = re.compile(r"[ \t!$-\[\]-~]*")


@dataclass
class ParsedPolicy:
    """The result of parsing several files as one policy."""

    rules: list[Rule] = field(default_factory=list)
    action_sets: dict[str, frozenset[str]] = field(default_factory=dict)
    domain_sets: dict[str, frozenset[str]] = field(default_factory=dict)
    errors: list[PolicyError] = field(default_factory=list)


class _LineError(Exception):
    """A problem with the statement being parsed; becomes a PolicyError at its location."""


class _ErrorLimit(Exception):
    """Raised once MAX_ERRORS have been collected: parsing stops."""


class _Errors:
    def __init__(self) -> None:
        self.items: list[PolicyError] = []

    def add(self, file: str, line: int, message: str) -> None:
        if len(self.items) >= MAX_ERRORS:
            raise _ErrorLimit
        self.items.append(PolicyError(file, line, message))
        if len(self.items) >= MAX_ERRORS:
            self.items.append(PolicyError(file, line, "too many errors; stopped here"))
            raise _ErrorLimit


@dataclass
class _SetDef:
    kind: str  # "actions" | "domains"
    name: str
    members: list[str]
    file: str
    line: int


@dataclass(slots=True)
class _RawRule:
    file: str
    line: int
    effect: str
    subject_kind: str
    subject_name: str
    action_items: list[str]
    domain_items: list[str]
    expires: _dt.date | None
    reason: str | None
    confirm: str | None

    def build(self, actions: frozenset[str], domains: frozenset[str] | None) -> Rule:
        return Rule(
            file=self.file,
            line=self.line,
            effect=self.effect,
            subject_kind=self.subject_kind,
            subject_name=self.subject_name,
            actions=actions,
            domains=domains,
            expires=self.expires,
            reason=self.reason,
            confirm=self.confirm,
        )


def _show(token: str) -> str:
    """Quote a token for an error message, shortened and with control characters escaped."""
    if len(token) > 40:
        token = token[:37] + "..."
    return repr(token)


def tokenize_line(line: str) -> tuple[list[str], bool]:
    """Split one physical line into tokens; also report whether it continues on the next line.

    ``key="quoted value"`` becomes the single token ``key=quoted value``; quotes anywhere else
    are an error. A comment line never continues, so a commented-out rule ending in a
    backslash cannot swallow the next line.
    """
    if _PLAIN_LINE_RE.fullmatch(line):
        return line.split(), False  # the common case, about three times faster
    tokens: list[str] = []
    pos, end = 0, len(line)
    last = len(line.rstrip(_WS))
    while True:
        match = _WS_RE.match(line, pos)
        pos = match.end() if match else pos
        if pos >= end or line[pos] == "#":
            return tokens, False
        quoted = _QUOTED_OPTION_RE.match(line, pos)
        if quoted:
            token = quoted.group(1) + quoted.group(2)
            pos = quoted.end()
        else:
            bare = _BARE_TOKEN_RE.match(line, pos)
            if bare is None:
                raise _LineError(
                    'unexpected \'"\' (quotes are only allowed in option values: reason="...")'
                )
            token = bare.group()
            pos = bare.end()
        if pos < end and line[pos] not in _WS:
            if _OPTION_PREFIX_RE.fullmatch(token):
                raise _LineError(f"unterminated quote after {token}")
            if quoted:
                raise _LineError("expected a space after the closing quote")
            raise _LineError(
                f"unexpected '\"' in {_show(token)} "
                '(quotes are only allowed in option values: reason="...")'
            )
        tokens.append(token)
        if pos >= last:
            if token.endswith("\\") and not quoted:
                token = token[:-1]
                if token:
                    tokens[-1] = token
                else:
                    tokens.pop()
                return tokens, True
            return tokens, False


def _split_list(token: str) -> list[str]:
    items = token.split(",")
    if "" in items:
        raise _LineError(f"empty item in list {_show(token)} (stray comma?)")
    return items


def _check_set_ref(item: str) -> None:
    if not SET_NAME_RE.fullmatch(item[1:]):
        raise _LineError(f"bad set name {_show(item)}")


def _check_action_item(item: str) -> None:
    if item.startswith("@"):
        _check_set_ref(item)
    elif item != "*" and item not in ALL_ACTIONS:
        raise _LineError(f"unknown action {_show(item)}")


def _check_domain_item(item: str) -> None:
    if item.startswith("@"):
        _check_set_ref(item)
    elif item != "*" and not is_domain_name(item):
        raise _LineError(
            f"bad domain name {_show(item)} "
            "(letters, digits and _ . : - , starting with a letter or digit, at most 64)"
        )


def _parse_set(tokens: list[str], file: str, line: int, names: dict[str, str]) -> _SetDef:
    kind = tokens[0]
    rest = tokens[1:]
    if not rest:
        raise _LineError(f"expected '{kind} @NAME = MEMBERS...'")
    name_token, member_tokens = rest[0], rest[1:]
    if "=" in name_token:
        name_token, after = name_token.split("=", 1)
        member_tokens = ([after] if after else []) + member_tokens
    elif member_tokens and member_tokens[0].startswith("="):
        first = member_tokens[0][1:]
        member_tokens = ([first] if first else []) + member_tokens[1:]
    else:
        raise _LineError(f"expected '=' after the set name in '{kind} @NAME = MEMBERS...'")
    if not name_token.startswith("@"):
        raise _LineError(f"set name must start with '@', got {_show(name_token)}")
    _check_set_ref(name_token)
    name = name_token[1:]
    members: list[str] = []
    for token in member_tokens:
        for item in _split_list(token):
            if item == "*":
                hint = "use @all for every action" if kind == "actions" else "list the domains"
                raise _LineError(f"'*' is not allowed in a set ({hint})")
            if kind == "actions":
                _check_action_item(item)
            else:
                _check_domain_item(item)
            members.append(names.setdefault(item, item))
            if len(members) > MAX_SET_MEMBERS:
                raise _LineError(f"set @{name} has more than {MAX_SET_MEMBERS} members")
    if not members:
        raise _LineError(f"set @{name} has no members")
    return _SetDef(kind, name, members, file, line)


def _parse_options(effect: str, options: list[str]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for token in options:
        key, value = token.split("=", 1)
        if key not in OPTION_KEYS:
            raise _LineError(
                f"unknown option {_show(key)} (expected one of {', '.join(OPTION_KEYS)})"
            )
        if key in seen:
            raise _LineError(f"option {key}= given twice")
        seen[key] = value
    if "expires" in seen:
        value = seen["expires"]
        try:
            if not _DATE_RE.fullmatch(value):
                raise ValueError(value)
            _dt.date.fromisoformat(value)
        except ValueError:
            raise _LineError(f"bad date {_show(value)} in expires= (expected YYYY-MM-DD)") from None
    if "reason" in seen:
        value = seen["reason"]
        if not value:
            raise _LineError("empty reason=")
        if not value.isprintable() or len(value) > MAX_REASON_CHARS:
            raise _LineError(
                f"reason= must be printable text of at most {MAX_REASON_CHARS} characters"
            )
    if "confirm" in seen:
        if seen["confirm"] not in CONFIRM_STRENGTH:
            allowed = ", ".join(CONFIRM_STRENGTH)
            raise _LineError(f"bad confirm= value {_show(seen['confirm'])} (expected {allowed})")
        if effect != "allow":
            raise _LineError("confirm= only applies to allow rules")
    return seen


def _parse_rule(tokens: list[str], file: str, line: int, out: _Statements) -> _RawRule | Rule:
    """One allow/deny statement: a Rule if it names no user-defined set, else a _RawRule."""
    effect = tokens[0]
    if len(tokens) < 4:
        raise _LineError(f"expected '{effect} SUBJECT ACTIONS DOMAINS [key=value ...]'")
    kind, sep, name = tokens[1].partition(":")
    if not sep or kind not in ("user", "group") or not SUBJECT_NAME_RE.fullmatch(name):
        raise _LineError(f"bad subject {_show(tokens[1])} (expected user:NAME or group:NAME)")
    if "=" in tokens[2]:
        raise _LineError(f"expected ACTIONS, got option {_show(tokens[2])}")
    action_items = _split_list(tokens[2])
    for item in action_items:
        if item not in ALL_ACTIONS:  # the common case needs no further check
            _check_action_item(item)
    names = out.names
    domain_items: list[str] = []
    options: list[str] = []
    for token in tokens[3:]:
        if "=" in token:
            options.append(token)
        elif options:
            raise _LineError(f"{_show(token)} after options (options go last)")
        else:
            for item in _split_list(token):
                if not is_domain_name(item):  # a set, "*" or an error
                    _check_domain_item(item)
                    if (
                        item == "*"
                        and effect == "allow"
                        and not set(action_items) <= SELF_SERVICE_ACTIONS
                    ):
                        raise _LineError(
                            "'*' in DOMAINS is only allowed in deny rules and in grants of "
                            "keys alone (a grant must never cover domains created later)"
                        )
                domain_items.append(names.setdefault(item, item))
    if not domain_items:
        raise _LineError("missing DOMAINS")
    opts = _parse_options(effect, options) if options else {}
    expires = _dt.date.fromisoformat(opts["expires"]) if "expires" in opts else None
    raw = _RawRule(
        file,
        line,
        effect,
        "user" if kind == "user" else "group",  # not a new string per rule
        names.setdefault(name, name),
        action_items,
        domain_items,
        expires,
        opts.get("reason"),
        opts.get("confirm"),
    )
    # "@" can only start a set reference: names and set names never hold one
    return out.build_now(raw, "@" in tokens[2], any("@" in token for token in tokens[3:]))


@dataclass
class _Statements:
    sets: list[_SetDef] = field(default_factory=list)
    #: in statement order; a rule that names no user-defined set is built at once (a Rule),
    #: the others once every set is known
    rules: list[_RawRule | Rule] = field(default_factory=list)
    #: one copy of each subject and domain name, however many statements repeat it
    names: dict[str, str] = field(default_factory=dict)
    #: one frozenset object per distinct set of names that rules list literally
    canonical: dict[frozenset[str], frozenset[str]] = field(default_factory=dict)

    def build_now(self, raw: _RawRule, action_refs: bool, domain_refs: bool) -> _RawRule | Rule:
        """``raw`` as a Rule if it needs no set definition (none can fail), else ``raw``.

        Resolves exactly as ``_Resolver.items`` would: ``*``, literal names, or one built-in
        action set; anything else waits for ``_resolve``. ``*_refs``: whether the actions or
        the domains name a set.
        """
        actions: frozenset[str]
        if "*" in raw.action_items:
            actions = ALL_ACTIONS
        elif not action_refs:
            actions = self.literal(raw.action_items)
        elif len(set(raw.action_items)) == 1 and raw.action_items[0][1:] in BUILTIN_ACTION_SETS:
            actions = BUILTIN_ACTION_SETS[raw.action_items[0][1:]]
        else:
            return raw
        domains: frozenset[str] | None
        if "*" in raw.domain_items:
            domains = None
        elif not domain_refs:
            domains = self.literal(raw.domain_items)
        else:
            return raw
        return raw.build(actions, domains)

    def literal(self, items: Iterable[str]) -> frozenset[str]:
        names = frozenset(items)
        return self.canonical.setdefault(names, names)


def _logical_lines(text: str, file: str, errors: _Errors) -> Iterable[tuple[int, list[str]]]:
    """Yield (first line number, tokens) per statement; bad lines are reported and skipped."""
    if text.startswith("\ufeff"):
        text = text[1:]
    tokens: list[str] = []
    start = 0
    length = 0
    broken = False
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        physical = raw[:-1] if raw.endswith("\r") else raw
        if not start:
            start, tokens, length, broken = number, [], 0, False
        length += len(physical)
        message = None
        continues = False
        if length > MAX_LINE_CHARS:
            message = f"line longer than {MAX_LINE_CHARS} characters"
        elif not broken:
            try:
                more, continues = tokenize_line(physical)
                tokens.extend(more)
            except _LineError as exc:
                message = str(exc)
        if message is not None and not broken:
            errors.add(file, start, message)
            broken = True
        if broken:
            # The statement is lost; skip the rest of it without parsing (best effort).
            continues = physical.rstrip(_WS).endswith("\\")
        if continues:
            continue
        if not broken and tokens:
            yield start, tokens
        start = 0
    if start:
        errors.add(file, start, "line continues past the end of the file")


def _parse_text(text: str, file: str, errors: _Errors, out: _Statements) -> None:
    if len(text) > MAX_FILE_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        errors.add(file, 0, f"file larger than {MAX_FILE_BYTES} bytes")
        return
    for line, tokens in _logical_lines(text, file, errors):
        keyword = tokens[0]
        try:
            if keyword in ("actions", "domains"):
                if len(out.sets) >= MAX_SETS:
                    errors.add(file, line, f"too many sets (limit {MAX_SETS})")
                    return
                out.sets.append(_parse_set(tokens, file, line, out.names))
            elif keyword in ("allow", "deny"):
                if len(out.rules) >= MAX_RULES:
                    errors.add(file, line, f"too many rules (limit {MAX_RULES})")
                    return
                out.rules.append(_parse_rule(tokens, file, line, out))
            else:
                raise _LineError(
                    f"unknown statement {_show(keyword)} (expected allow, deny, actions or domains)"
                )
        except _LineError as exc:
            errors.add(file, line, str(exc))


class _Resolver:
    """Expands set references, detecting unknown sets, kind mismatches, cycles and blow-ups."""

    def __init__(
        self,
        defs: dict[str, _SetDef],
        errors: _Errors,
        canonical: dict[frozenset[str], frozenset[str]],
        known: Mapping[str, tuple[str, frozenset[str]]],
    ) -> None:
        self.defs = defs
        self.errors = errors
        #: sets expanded earlier, by another parse: name -> (kind, members)
        self.known = known
        self.memo: dict[str, tuple[frozenset[str], int]] = {}  # name -> (members, nesting height)
        self.stack: list[str] = []
        self.work = 0
        self.exhausted = False
        #: one frozenset object per distinct set of names that rules list literally
        self.canonical = canonical

    def _union(self, out: set[str], members: frozenset[str], file: str, line: int) -> None:
        """Copy ``members`` into ``out`` unless the policy's expansion budget is spent."""
        if self.exhausted:
            return
        self.work += len(members)
        if self.work > MAX_EXPANSION_WORK:
            self.exhausted = True
            message = f"policy too large to expand (over {MAX_EXPANSION_WORK} set members)"
            self.errors.add(file, line, message)
            return
        out |= members

    def ref(self, name: str, kind: str, file: str, line: int) -> tuple[frozenset[str], int]:
        """The members and nesting height of ``@name`` used where a ``kind`` set is expected."""
        empty: tuple[frozenset[str], int] = (frozenset(), 0)
        if name in BUILTIN_ACTION_SETS:
            if kind == "actions":
                return BUILTIN_ACTION_SETS[name], 1
            self.errors.add(file, line, f"@{name} is a built-in action set, not a domain set")
            return empty
        definition = self.defs.get(name)
        if definition is None and name in self.known:
            known_kind, members = self.known[name]
            if known_kind == kind:
                return members, 1
            have, want = known_kind[:-1], kind[:-1]
            self.errors.add(file, line, f"@{name} is a {have} set, not a {want} set")
            return empty
        if definition is None:
            self.errors.add(file, line, f"unknown set @{name}")
            return empty
        if definition.kind != kind:
            have, want = definition.kind[:-1], kind[:-1]
            where = f"{definition.file}:{definition.line}"
            self.errors.add(file, line, f"@{name} is a {have} set ({where}), not a {want} set")
            return empty
        if name in self.stack:
            cycle = self.stack[self.stack.index(name) :] + [name]
            self.errors.add(file, line, "set cycle: " + " -> ".join(f"@{n}" for n in cycle))
            return empty
        height = self.memo[name][1] if name in self.memo else 1
        if len(self.stack) + height > MAX_SET_DEPTH:
            self.errors.add(file, line, f"sets nested more than {MAX_SET_DEPTH} deep")
            return empty
        return self.expand(name)

    def expand(self, name: str) -> tuple[frozenset[str], int]:
        cached = self.memo.get(name)
        if cached is not None:
            return cached
        definition = self.defs[name]
        file, line = definition.file, definition.line
        self.stack.append(name)
        out: set[str] = set()
        height = 1
        for item in dict.fromkeys(definition.members):
            if item.startswith("@"):
                members, child_height = self.ref(item[1:], definition.kind, file, line)
                height = max(height, child_height + 1)
                self._union(out, members, file, line)
            else:
                out.add(item)
            if len(out) > MAX_SET_MEMBERS:
                self.errors.add(file, line, f"set @{name} has more than {MAX_SET_MEMBERS} members")
                break
        self.stack.pop()
        result = (frozenset(out), height)
        self.memo[name] = result
        return result

    def items(self, items: list[str], kind: str, file: str, line: int) -> frozenset[str]:
        """Expand a rule's list of names and ``@set`` references (``*`` handled by caller)."""
        unique = [item for item in dict.fromkeys(items) if item != "*"]
        if len(unique) == 1 and unique[0].startswith("@"):
            return self.ref(unique[0][1:], kind, file, line)[0]  # share the set, no copy
        out: set[str] = set()
        for item in unique:
            if item.startswith("@"):
                self._union(out, self.ref(item[1:], kind, file, line)[0], file, line)
            else:
                out.add(item)
        result = frozenset(out)
        return self.canonical.setdefault(result, result)


def _resolve(
    statements: _Statements,
    errors: _Errors,
    result: ParsedPolicy,
    known: Mapping[str, tuple[str, frozenset[str]]],
) -> None:
    defs: dict[str, _SetDef] = {}
    for definition in statements.sets:
        if definition.name in BUILTIN_ACTION_SETS:
            errors.add(
                definition.file,
                definition.line,
                f"cannot redefine built-in set @{definition.name}",
            )
        elif definition.name in defs:
            first = defs[definition.name]
            errors.add(
                definition.file,
                definition.line,
                f"set @{definition.name} already defined at {first.file}:{first.line}",
            )
        else:
            defs[definition.name] = definition
    resolver = _Resolver(defs, errors, statements.canonical, known)
    for name, definition in defs.items():
        members = resolver.expand(name)[0]
        target = result.action_sets if definition.kind == "actions" else result.domain_sets
        target[name] = members
    for raw in statements.rules:
        if isinstance(raw, Rule):
            result.rules.append(raw)
            continue
        if "*" in raw.action_items:
            actions = ALL_ACTIONS
        else:
            actions = resolver.items(raw.action_items, "actions", raw.file, raw.line)
        domains: frozenset[str] | None
        if "*" in raw.domain_items:
            domains = None
        else:
            domains = resolver.items(raw.domain_items, "domains", raw.file, raw.line)
        result.rules.append(raw.build(actions, domains))


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: for building large acyclic structures.

    Building a policy creates millions of objects and no reference cycles; each collection
    the allocations would trigger walks everything built so far (a third of the load time of
    a large policy). Restores the collector's previous state.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_sources(
    sources: Iterable[tuple[str, str]],
    known_sets: Mapping[str, tuple[str, frozenset[str]]] | None = None,
) -> ParsedPolicy:
    """Parse ``(file name, text)`` pairs, in order, as one policy; sets are shared by all files.

    The file name is used as given in every error and rule location. ``known_sets`` (name ->
    ("actions"|"domains", members)) are sets of another policy that these texts may use as
    if they defined them (a rule typed on a command line, read against the installed policy).
    """
    errors = _Errors()
    statements = _Statements()
    result = ParsedPolicy()
    with gc_paused():
        try:
            for file, text in sources:
                _parse_text(text, file, errors, statements)
            _resolve(statements, errors, result, known_sets or {})
        except _ErrorLimit:
            pass
    result.errors = errors.items
    return result
