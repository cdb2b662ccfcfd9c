"""Location regexes written by users: compiled like nginx's PCRE, matched with a time limit.

Every evaluation of a user's pattern (the simulator, the routes tester, the lint) goes through
``timed_search``, which uses the ``regex`` package's ``timeout=``: a pattern that backtracks for
ever raises RegexTimeout, a readable error, instead of holding a worker. ``catastrophic_overlap``
is the static half: it finds nested quantifiers that can split the same text in exponentially
many ways, which the validators refuse before such a pattern is ever stored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeAlias

import regex
from django.conf import settings
from django.utils.translation import gettext

# re's own parser gives the pattern's structure (private, but stable since Python 3.11, where it
# was renamed from sre_parse; the validators already compile with re, so the syntax is the same).
if TYPE_CHECKING:
    # typeshed describes that module under its old names only; at run time those names are
    # deprecated shims that warn on import.
    import sre_constants as _sre
    import sre_parse as _sre_parse
else:
    from re import _constants as _sre
    from re import _parser as _sre_parse

# One parsed item: an opcode and its argument. The argument's shape depends on the opcode (a
# code point for LITERAL, (min, max, body) for a repeat, (group, add, remove, body) for a
# group, ...), which no static type can follow, so it stays Any and each branch reads it as its
# opcode defines.
_Item: TypeAlias = tuple[int, Any]

DEFAULT_TIMEOUT = 0.2
# Groups and repeats nested deeper than this are refused: no location needs them, and the static
# check below walks the pattern recursively.
MAX_NESTING = 20

# A named group (?<name>...) and a back reference \k<name> are PCRE spellings; neither re nor
# regex takes \k<name>, and re does not take (?<name>. An even run of backslashes is literal.
_PCRE_NAMED_GROUP = re.compile(r"(?<!\\)((?:\\\\)*)\(\?<(?![=!])")
_PCRE_BACKREF = re.compile(r"(?<!\\)((?:\\\\)*)\\k<(\w+)>")

_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT)
# Constructs whose matching the overlap analysis cannot reason about: it claims nothing there.
_OPAQUE = (
    _sre.ASSERT,
    _sre.ASSERT_NOT,
    _sre.ATOMIC_GROUP,
    _sre.POSSESSIVE_REPEAT,
    _sre.GROUPREF,
    _sre.GROUPREF_EXISTS,
)
# The characters the analysis reasons about: ASCII plus a few non-ASCII stand-ins. An overlap
# found among them is a real overlap: the approximation can miss one, never invent one.
_UNIVERSE = frozenset(range(128)) | frozenset((0xA0, 0xE9, 0x4E2D))
_CATEGORIES = {
    _sre.CATEGORY_DIGIT: re.compile(r"\d"),
    _sre.CATEGORY_NOT_DIGIT: re.compile(r"\D"),
    _sre.CATEGORY_SPACE: re.compile(r"\s"),
    _sre.CATEGORY_NOT_SPACE: re.compile(r"\S"),
    _sre.CATEGORY_WORD: re.compile(r"\w"),
    _sre.CATEGORY_NOT_WORD: re.compile(r"\W"),
}


class RegexTimeout(Exception):
    """A user's regex took longer than CONSOLE_REGEX_TIMEOUT to match one subject."""

    def __init__(self, *, pattern: str, subject: str, seconds: float):
        self.pattern = pattern
        self.subject = subject
        self.seconds = seconds
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """Return the explanation for a page or a command, in the active language."""
        return gettext(
            "The regular expression %(pattern)s took longer than %(seconds)s s to match "
            "%(subject)s; simplify it."
        ) % {"pattern": self.pattern, "seconds": f"{self.seconds:g}", "subject": self.subject}


def regex_timeout() -> float:
    """Return the time limit of one match of a user's regex, in seconds."""
    return float(getattr(settings, "CONSOLE_REGEX_TIMEOUT", DEFAULT_TIMEOUT))


def pythonic(pattern: str) -> str:
    """Return the pattern with PCRE's named-group spellings in the form Python's engines take."""
    pattern = _PCRE_NAMED_GROUP.sub(r"\1(?P<", pattern)
    return _PCRE_BACKREF.sub(r"\1(?P=\2)", pattern)


@lru_cache(maxsize=512)
def compile_location(pattern: str, *, caseless: bool) -> regex.Pattern | None:
    """Return the location regex compiled over bytes (nginx matches bytes), or None if broken."""
    try:
        return regex.compile(pythonic(pattern).encode("utf-8"), regex.IGNORECASE if caseless else 0)
    except (regex.error, ValueError, OverflowError, RecursionError):
        return None


def timed_search(compiled: regex.Pattern, subject: bytes, *, pattern: str) -> bool:
    """Return whether compiled matches somewhere in subject; raise RegexTimeout past the limit."""
    seconds = regex_timeout()
    try:
        return compiled.search(subject, timeout=seconds) is not None
    except TimeoutError:
        raise RegexTimeout(
            pattern=pattern, subject=subject.decode("utf-8", "backslashreplace"), seconds=seconds
        ) from None


# --- the static check -----------------------------------------------------------------------


def _fold(chars: set[int]) -> set[int]:
    folded = set(chars)
    for code in chars:
        for other in (chr(code).lower(), chr(code).upper()):
            if len(other) == 1 and ord(other) in _UNIVERSE:
                folded.add(ord(other))
    return folded


def _class(op: int, av: Any, fold: bool) -> set[int]:
    """Return the universe characters one single-character item matches."""
    if op == _sre.LITERAL:
        found = {av} & _UNIVERSE
    elif op == _sre.NOT_LITERAL:
        return set(_UNIVERSE - _fold({av} if fold else {av}))
    elif op == _sre.ANY:
        found = set(_UNIVERSE - {0x0A})
    else:  # IN
        negate = bool(av) and av[0][0] == _sre.NEGATE
        found = set()
        for kind, value in av[1:] if negate else av:
            if kind == _sre.LITERAL:
                found.add(value)
            elif kind == _sre.RANGE:
                found |= {c for c in _UNIVERSE if value[0] <= c <= value[1]}
            elif kind == _sre.CATEGORY and value in _CATEGORIES:
                found |= {c for c in _UNIVERSE if _CATEGORIES[value].fullmatch(chr(c))}
        found &= _UNIVERSE
        if fold:
            found = _fold(found)
        return set(_UNIVERSE - found) if negate else found
    return _fold(found) if fold else found


def _flags(av: Any, fold: bool) -> bool:
    add, remove = av[1], av[2]
    if add & _sre.SRE_FLAG_IGNORECASE:
        return True
    if remove & _sre.SRE_FLAG_IGNORECASE:
        return False
    return fold


def _first(items: Sequence[_Item], fold: bool) -> tuple[set[int], bool]:
    """Return (characters a match of the sequence can start with, whether it can be empty)."""
    chars: set[int] = set()
    for op, av in items:
        found, empty = _first_item(op, av, fold)
        chars |= found
        if not empty:
            return chars, False
    return chars, True


def _first_item(op: int, av: Any, fold: bool) -> tuple[set[int], bool]:
    if op in (_sre.LITERAL, _sre.NOT_LITERAL, _sre.ANY, _sre.IN):
        return _class(op, av, fold), False
    if op == _sre.BRANCH:
        chars: set[int] = set()
        empty = False
        for alternative in av[1]:
            found, can_be_empty = _first(alternative, fold)
            chars |= found
            empty = empty or can_be_empty
        return chars, empty
    if op == _sre.SUBPATTERN:
        return _first(av[3], _flags(av, fold))
    if op in _REPEATS or op == _sre.POSSESSIVE_REPEAT:
        found, empty = _first(av[2], fold)
        return found, empty or av[0] == 0
    if op == _sre.ATOMIC_GROUP:
        return _first(av, fold)
    # Anchors and assertions match no character; anything else is claimed to match nothing.
    return set(), True


def _opaque(items: Sequence[_Item]) -> bool:
    for op, av in items:
        if op in _OPAQUE:
            return True
        if op == _sre.BRANCH and any(_opaque(alt) for alt in av[1]):
            return True
        if op == _sre.SUBPATTERN and _opaque(av[3]):
            return True
        if op in _REPEATS and _opaque(av[2]):
            return True
    return False


def _inner_overlap(items: Sequence[_Item], follow: set[int], fold: bool) -> int | None:
    """Return a character that a variable repeat in items shares with what can follow it."""
    after = set(follow)
    for op, av in reversed(items):
        found = None
        if op in _REPEATS:
            low, high, body = av
            start, _empty = _first(body, fold)
            if high > low and high >= 2:
                shared = start & after
                if shared:
                    # A printable character reads better in the message than a control one.
                    return min(shared, key=lambda c: (not 0x21 <= c <= 0x7E, c))
            # The body can follow itself when it repeats.
            found = _inner_overlap(body, after | start if high >= 2 else after, fold)
        elif op == _sre.SUBPATTERN:
            found = _inner_overlap(av[3], after, _flags(av, fold))
        elif op == _sre.BRANCH:
            for alternative in av[1]:
                found = found if found is not None else _inner_overlap(alternative, after, fold)
        if found is not None:
            return found
        chars, empty = _first_item(op, av, fold)
        after = chars | after if empty else chars
    return None


def _nested(items: Sequence[_Item], fold: bool) -> int | None:
    for op, av in items:
        found = None
        if op in _REPEATS:
            _low, high, body = av
            if high == _sre.MAXREPEAT and not _opaque(body):
                start, _empty = _first(body, fold)
                # One iteration of the body can be followed by the next one.
                found = _inner_overlap(body, start, fold)
            found = found if found is not None else _nested(body, fold)
        elif op == _sre.POSSESSIVE_REPEAT:
            found = _nested(av[2], fold)
        elif op == _sre.SUBPATTERN:
            found = _nested(av[3], _flags(av, fold))
        elif op == _sre.ATOMIC_GROUP:
            found = _nested(av, fold)
        elif op == _sre.BRANCH:
            for alternative in av[1]:
                found = found if found is not None else _nested(alternative, fold)
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            found = _nested(av[1], fold)
        if found is not None:
            return found
    return None


def _children(op: int, av: Any) -> list[Sequence[_Item]]:
    if op == _sre.BRANCH:
        return list(av[1])
    if op == _sre.SUBPATTERN:
        return [av[3]]
    if op in _REPEATS or op == _sre.POSSESSIVE_REPEAT:
        return [av[2]]
    if op == _sre.ATOMIC_GROUP:
        return [av]
    if op in (_sre.ASSERT, _sre.ASSERT_NOT):
        return [av[1]]
    if op == _sre.GROUPREF_EXISTS:
        return [av[1]] + ([av[2]] if av[2] else [])
    return []


def nesting_depth(pattern: str) -> int:
    """Return how deeply groups, repeats and assertions nest in pattern (0 if it does not parse)."""
    try:
        parsed = _sre_parse.parse(pythonic(pattern))
    except (re.error, RecursionError, OverflowError, ValueError):
        return 0
    deepest = 0
    stack: list[tuple[Sequence[_Item], int]] = [(parsed.data, 0)]
    while stack:
        items, depth = stack.pop()
        deepest = max(deepest, depth)
        for op, av in items:
            stack.extend((list(child), depth + 1) for child in _children(op, av))
    return deepest


def catastrophic_overlap(pattern: str, *, caseless: bool = False) -> str | None:
    """Return a character on which nested quantifiers overlap, or None when there are none.

    ``(a+)+``, ``(a*)*``, ``(.*a){3,}`` or ``([a-z]+-?)+``: an unbounded repeat holds a repeat of
    variable length whose characters can also start what follows it inside the outer repeat, so
    a backtracking engine (nginx's PCRE) tries exponentially many ways to split a failing path.
    Patterns that do not parse return None: compiling them reports the error.
    """
    try:
        parsed = _sre_parse.parse(pythonic(pattern), re.IGNORECASE if caseless else 0)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None
    fold = bool(parsed.state.flags & _sre.SRE_FLAG_IGNORECASE)
    try:
        found = _nested(parsed.data, fold)
    except RecursionError:
        return None  # nested too deeply to judge here; the time limit still applies
    return None if found is None else chr(found)
