"""Tab completion for the interactive shell, generated from the verb registry.

It completes verbs, the options of the verb on the line, verbs after ``help``, and the caller's
own domain names. Domain names come from the helper (``list``, refreshed in the background by
``watch.DomainWatch``): only names the grammar accepts are offered, so a completion can never
insert a character that would be refused, or one a terminal would interpret.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from vpsshell.checks import is_domain_name
from vpsshell.errors import UsageError
from vpsshell.shell.grammar import COUNT, ESCAPE, TIME, Verb, check_characters


class ShellCompleter(Completer):
    """Completes one command line of the closed grammar."""

    def __init__(
        self, verbs: Mapping[str, Verb], domain_names: Callable[[], Iterable[str]]
    ) -> None:
        self.verbs = verbs
        self.domain_names = domain_names

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        text = document.text_before_cursor
        try:
            check_characters(text)
        except UsageError:
            return
        words = text.split()
        current = "" if not text or text[-1] == " " else words.pop()
        if not words:
            yield from self._verbs(current)
            return
        verb = self.verbs.get(words[0])
        if verb is None:
            return
        given = words[1:]
        if current.startswith("-"):
            yield from self._options(verb, current, given)
            return
        positional = [word for word in given if not word.startswith("-")]
        if verb.name == "help" and not positional:
            yield from self._verbs(current)
        elif verb.domain != "none" and not positional:
            yield from self._domains(current)

    def _verbs(self, prefix: str) -> Iterator[Completion]:
        seen: set[str] = set()
        for verb in self.verbs.values():
            if verb.name in seen or not verb.name.startswith(prefix):
                continue
            seen.add(verb.name)
            yield Completion(verb.name, -len(prefix), display_meta=verb.summary)
        if not prefix:
            return  # aliases only once the user starts typing one
        for word, verb in self.verbs.items():
            if word != verb.name and word.startswith(prefix):
                yield Completion(word, -len(prefix), display_meta=f"same as {verb.name}")

    def _options(self, verb: Verb, prefix: str, given: list[str]) -> Iterator[Completion]:
        used = {word[2:].split("=", 1)[0] for word in given if word.startswith("--")}
        for option in verb.options:
            if option.name in used:
                continue
            word = f"--{option.name}" + ("=" if option.kind in (COUNT, ESCAPE, TIME) else "")
            if word.startswith(prefix):
                yield Completion(word, -len(prefix), display_meta=option.help)

    def _domains(self, prefix: str) -> Iterator[Completion]:
        for name in sorted(set(self.domain_names())):
            if name.startswith(prefix) and is_domain_name(name):
                yield Completion(name, -len(prefix))
