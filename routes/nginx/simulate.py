"""Where does nginx send this request? A simulator of nginx's URI normalisation and location choice.

It follows nginx 1.22's own code rather than its documentation, because the two differ at the
edges that matter here:

- ``ngx_http_parse_complex_uri``: ``%xx`` decoding, merged slashes, ``.`` and ``..`` segments, a
  ``..`` above the root is a 400, a raw ``#`` ends the path, decoded ``%``, ``#`` and ``?`` stay
  literal while a decoded ``/`` or ``.`` takes part in the normalisation.
- ``ngx_http_init_locations`` and ``ngx_http_core_find_static_location``: exact and prefix
  locations live in a binary tree built from the sorted names. The 301 for a prefix location
  ending in ``/`` requested without it is found while walking that tree, so whether it happens
  depends on the tree's shape; the simulator builds the same tree and walks it the same way.
- ``ngx_http_core_find_location``: an exact match or the 301 stop the search, a ``^~`` longest
  prefix skips the regexes, otherwise regexes are tried in config order.

Regexes are matched with the ``regex`` package under CONSOLE_REGEX_TIMEOUT (routes.nginx.regexes):
a pattern that backtracks too long raises RegexTimeout instead of holding the worker.

tests/test_simulate.py checks the simulator against real nginx on a corpus of requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.utils.translation import gettext_lazy as _

from routes.nginx import boundaries as b
from routes.nginx.regexes import RegexTimeout, compile_location, timed_search
from routes.nginx.render import Location, effective_locations

if TYPE_CHECKING:
    from routes.models import Deployment, RouteOverride

BAD_REQUEST = 400
MOVED_PERMANENTLY = 301
FOUND = 302

_HEX = b"0123456789abcdefABCDEF"
# ngx_filename_cmp: "we need '/' to be the lowest character". Names never contain NUL, so mapping
# "/" to NUL gives Python's bytes order the same result.
_SLASH_LOWEST = bytes.maketrans(b"/", b"\x00")
# ngx_escape_uri(NGX_ESCAPE_URI): space, #, %, ? and every byte outside 0x21..0x7e.
_ESCAPE = frozenset(b" #%?") | frozenset(range(0x00, 0x21)) | frozenset(range(0x7F, 0x100))


class BadRequest(Exception):
    """nginx answers 400 to this request target."""


@dataclass(frozen=True)
class Simulation:
    """What nginx does with one request target."""

    raw_path: str
    path: str | None  # the normalised, decoded path nginx matches locations against
    args: str
    status: int | None  # 301, 302 or 400 from nginx itself; None when the request is proxied
    location: Location | None
    upstream: str  # cpa | cpamp | "" (redirect or error)
    redirect: str = ""
    reason: str = ""
    regexes_tried: tuple[str, ...] = field(default=())

    @property
    def proxied(self) -> bool:
        return self.status is None


# --- URI normalisation ------------------------------------------------------------------


_BAD_ESCAPE = _("A percent sign is not followed by two hexadecimal digits.")


def _request_target(raw_path: str) -> bytes:
    data = raw_path.encode("utf-8")
    if not data.startswith(b"/"):
        raise BadRequest(_("The request target must start with /."))
    for byte in data:
        # The request line ends at a space; nginx refuses control characters in it.
        if byte <= 0x20 or byte == 0x7F:
            raise BadRequest(_("The request target contains a space or a control character."))
    return data


def normalise(target: bytes) -> tuple[bytes, bytes]:
    """Return (path, args) as nginx's ngx_http_parse_complex_uri does; raise BadRequest."""
    usual, slash, dot, dot_dot, quoted, quoted_second = range(6)
    out = bytearray()
    state = usual
    quoted_state = usual
    decoded = 0
    args = b""
    i = 0
    n = len(target)
    ch = target[0]
    i = 1

    def up() -> None:
        # u -= 4, then back to the previous slash: drop "/<segment>/.." (nginx's sw_dot_dot).
        pos = len(out) - 4
        while True:
            if pos < 0:
                raise BadRequest(_("The path climbs above the root with '..'."))
            if out[pos] == 0x2F:
                del out[pos + 1 :]
                return
            pos -= 1

    def take_args(start: int) -> bytes:
        end = target.find(b"#", start)
        return target[start:] if end < 0 else target[start:end]

    def close(last: int) -> None:
        # The path ends inside a segment: a final "/." is dropped, a final "/.." climbs.
        if last == dot:
            out.pop()
        elif last == dot_dot:
            up()

    while True:
        if state in (usual, slash, dot, dot_dot) and ch == 0x25:
            quoted_state, state = state, quoted
        elif state in (usual, slash, dot, dot_dot) and ch in (0x3F, 0x23):
            # A raw ? starts the query and a raw # the fragment: either ends the path.
            close(state)
            return bytes(out), take_args(i) if ch == 0x3F else args
        elif state == usual:
            if ch == 0x2F:
                state = slash
            out.append(ch)
        elif state == slash:
            if ch == 0x2E:
                state = dot
                out.append(ch)
            elif ch != 0x2F:  # a repeated slash is merged (merge_slashes on)
                state = usual
                out.append(ch)
        elif state == dot:
            if ch == 0x2F:
                state = slash
                out.pop()
            elif ch == 0x2E:
                state = dot_dot
                out.append(ch)
            else:
                state = usual
                out.append(ch)
        elif state == dot_dot:
            if ch == 0x2F:
                up()
                state = slash
            else:
                state = usual
                out.append(ch)
        elif state in (quoted, quoted_second):
            if ch not in _HEX:
                raise BadRequest(_BAD_ESCAPE)
            if state == quoted:
                decoded = int(chr(ch), 16)
                state = quoted_second
            else:
                ch = (decoded << 4) + int(chr(ch), 16)
                if ch == 0:
                    raise BadRequest(_("The path contains %00."))
                if ch in (0x25, 0x23, 0x3F):
                    # A decoded %, # or ? is a literal character, never an escape, fragment or
                    # query.
                    state = usual
                    out.append(ch)
                else:
                    # Any other decoded byte is processed again, as if it had been sent raw.
                    state = quoted_state
                    continue
        if i >= n:
            break
        ch = target[i]
        i += 1

    if state in (quoted, quoted_second):
        raise BadRequest(_BAD_ESCAPE)
    close(state)
    return bytes(out), args


# --- nginx's static location tree -------------------------------------------------------


@dataclass
class _Entry:
    name: bytes
    exact: Location | None = None
    inclusive: Location | None = None
    children: list[_Entry] = field(default_factory=list)

    @property
    def auto_redirect(self) -> bool:
        # proxy_pass in a location whose name ends with "/" sets auto_redirect (the 302 `= /`
        # location has no proxy_pass).
        return self.name.endswith(b"/") and any(
            loc is not None and not loc.redirect for loc in (self.exact, self.inclusive)
        )


@dataclass
class _Node:
    name: bytes
    entry: _Entry
    left: _Node | None = None
    right: _Node | None = None
    tree: _Node | None = None


def _locations_list(entries: list[_Entry]) -> list[_Entry]:
    # ngx_http_create_locations_list: each inclusive location adopts the following locations
    # whose names start with its name.
    result: list[_Entry] = []
    i = 0
    while i < len(entries):
        entry = entries[i]
        i += 1
        if entry.inclusive is None:
            result.append(entry)
            continue
        j = i
        while j < len(entries) and entries[j].name.startswith(entry.name):
            j += 1
        entry.children = _locations_list(entries[i:j])
        result.append(entry)
        i = j
    return result


def _tree(entries: list[_Entry], prefix: int) -> _Node | None:
    # ngx_http_create_locations_tree: the middle entry (ngx_queue_middle = n // 2) is the node.
    if not entries:
        return None
    middle = len(entries) // 2
    entry = entries[middle]
    node = _Node(name=entry.name[prefix:], entry=entry)
    node.left = _tree(entries[:middle], prefix)
    node.right = _tree(entries[middle + 1 :], prefix)
    node.tree = _tree(entry.children, len(entry.name))
    return node


def _static_tree(locations: Sequence[Location]) -> _Node | None:
    entries: dict[bytes, _Entry] = {}
    for loc in locations:
        if loc.is_regex:
            continue
        name = loc.path.encode("utf-8")
        entry = entries.setdefault(name, _Entry(name))
        if loc.match == b.EXACT:
            entry.exact = loc
        else:
            entry.inclusive = loc
    # ngx_http_cmp_locations: a shorter name before a longer one it prefixes, "/" lowest.
    ordered = [entries[name] for name in sorted(entries, key=lambda n: n.translate(_SLASH_LOWEST))]
    return _tree(_locations_list(ordered), 0)


def _find_static(node: _Node | None, uri: bytes) -> tuple[str, Location | None]:
    """Walk the tree like ngx_http_core_find_static_location: return (rc, location)."""
    rv, found = "declined", None
    while node is not None:
        n = min(len(uri), len(node.name))
        head = uri[:n].translate(_SLASH_LOWEST)
        name = node.name[:n].translate(_SLASH_LOWEST)
        if head != name:
            node = node.left if head < name else node.right
            continue
        if len(uri) > len(node.name):
            if node.entry.inclusive is not None:
                rv, found = "again", node.entry.inclusive
                uri = uri[len(node.name) :]
                node = node.tree
                continue
            node = node.right
            continue
        if len(uri) == len(node.name):
            if node.entry.exact is not None:
                return "ok", node.entry.exact
            return "again", node.entry.inclusive
        if len(uri) + 1 == len(node.name) and node.entry.auto_redirect:
            rv = "done"
            found = node.entry.exact or node.entry.inclusive
        node = node.left
    return rv, found


def _escape(name: bytes) -> str:
    return "".join(chr(c) if c not in _ESCAPE else f"%{c:02X}" for c in name)


def _display(data: bytes) -> str:
    return data.decode("utf-8", "backslashreplace")


class Router:
    """nginx's location choice for one list of locations: the tree is built once, asked often."""

    def __init__(self, locations: Sequence[Location]):
        self.locations = list(locations)
        self.tree = _static_tree(self.locations)
        self.regexes = [loc for loc in self.locations if loc.is_regex]
        # Patterns that hit the time limit once are not run again by this router: a lint asks
        # dozens of paths, and each would wait out the limit again.
        self.slow: dict[tuple[str, bool], RegexTimeout] = {}

    def matches(self, pattern: str, uri: bytes, *, caseless: bool) -> bool | None:
        """Return whether the regex matches uri, None if it does not compile; RegexTimeout."""
        key = (pattern, caseless)
        if key in self.slow:
            raise self.slow[key]
        compiled = compile_location(pattern, caseless=caseless)
        if compiled is None:
            return None
        try:
            return timed_search(compiled, uri, pattern=pattern)
        except RegexTimeout as exc:
            self.slow[key] = exc
            raise

    def choose(self, uri: bytes) -> tuple[str, Location | None, tuple[str, ...]]:
        """Return (rc, location, regexes tried) for a normalised uri, like nginx's find_location.

        Raises RegexTimeout when a regex takes longer than CONSOLE_REGEX_TIMEOUT to match.
        """
        rc, found = _find_static(self.tree, uri)
        if rc in ("ok", "done"):
            return rc, found, ()
        if rc == "again" and found is not None and found.modifier == "^~":
            return rc, found, ()
        tried: list[str] = []
        for loc in self.regexes:
            tried.append(loc.path)
            if self.matches(loc.path, uri, caseless=loc.match == b.REGEX_I):
                return "ok", loc, tuple(tried)
        return rc, found, tuple(tried)

    def simulate(self, raw_path: str) -> Simulation:
        """Return what nginx does with a request for raw_path; RegexTimeout for a slow regex."""
        try:
            uri, args = normalise(_request_target(raw_path))
        except BadRequest as exc:
            return Simulation(raw_path, None, "", BAD_REQUEST, None, "", reason=str(exc.args[0]))
        path, query = _display(uri), _display(args)
        rc, loc, tried = self.choose(uri)
        if loc is None:
            return Simulation(raw_path, path, query, 404, None, "", reason=str(_("No location.")))
        if rc == "done":
            redirect = _escape(loc.path.encode("utf-8")) + (f"?{query}" if args else "")
            reason = _(
                "nginx answers 301 with a trailing slash: %(name)s is a proxied location ending "
                "in / and the request lacks the slash."
            ) % {"name": loc.path}
            return Simulation(
                raw_path,
                path,
                query,
                MOVED_PERMANENTLY,
                loc,
                "",
                redirect=redirect,
                reason=str(reason),
                regexes_tried=tried,
            )
        if loc.redirect:
            return Simulation(
                raw_path,
                path,
                query,
                FOUND,
                loc,
                "",
                redirect=loc.redirect,
                reason=str(_("location = / answers 302 to the panel.")),
                regexes_tried=tried,
            )
        return Simulation(raw_path, path, query, None, loc, loc.target, regexes_tried=tried)


def choose(
    locations: Sequence[Location], uri: bytes
) -> tuple[str, Location | None, tuple[str, ...]]:
    """Return (rc, location, regexes tried) for a normalised uri (ngx_http_core_find_location)."""
    return Router(locations).choose(uri)


def simulate(
    deployment: Deployment, raw_path: str, overrides: Sequence[RouteOverride] | None = None
) -> Simulation:
    """Return what nginx does with a request for raw_path on the deployment's rendered config."""
    return Router(effective_locations(deployment, overrides)).simulate(raw_path)


def simulate_locations(locations: Sequence[Location], raw_path: str) -> Simulation:
    """Return what nginx does with raw_path, given the effective locations in config order."""
    return Router(locations).simulate(raw_path)
