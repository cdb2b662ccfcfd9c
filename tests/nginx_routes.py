"""Read a rendered server block (crossplane's parse) back into its routes, for the tests.

A route hands off with `return 597` (CPA) or `return 598` (CPAMP) to a named location, or, where
the login rate limit applies, proxies by itself; the 301s nginx would add for a proxy_pass
location named /x/ are written out as `location = /x`.
"""

from __future__ import annotations

from routes.nginx import boundaries as b
from routes.nginx import render

BY_CODE = {str(code): target for target, code in render.HANDOFF_CODES.items()}
BY_PASS = {f"http://${render.variable_name(t)}": t for t in b.TARGETS}


def handoffs(block: list[dict]) -> dict[str, str]:
    """Return {named location: target} of a server, checking its error_page lines match."""
    named = {}
    for d in block:
        if d["directive"] == "location" and d["args"][0].startswith("@"):
            ((name, (target,)),) = [(i["directive"], i["args"]) for i in d["block"]]
            assert name == "proxy_pass"
            named[d["args"][0]] = BY_PASS[target]
    pages = [d["args"] for d in block if d["directive"] == "error_page"]
    assert pages == [
        [str(render.HANDOFF_CODES[t]), "=", render.HANDOFF_LOCATIONS[t]] for t in named.values()
    ]
    assert named == {render.HANDOFF_LOCATIONS[t]: t for t in named.values()}
    return named


def slash_redirect(location: dict) -> str:
    """Return the /x/ a `location = /x { return 301 /x/$is_args$args; }` stands for, or ""."""
    args, body = location["args"], location["block"]
    if len(args) != 2 or args[0] != "=" or len(body) != 1 or body[0]["directive"] != "return":
        return ""
    code, *rest = body[0]["args"]
    if code != "301" or rest != [f"{args[1]}/$is_args$args"]:
        return ""
    return f"{args[1]}/"


def routes(block: list[dict]) -> list[tuple[str, str, list[tuple[str, list[str]]]]]:
    """Return (modifier, path, body) of each route location, in order, named and 301s left out.

    A body that hands off reads [("proxy_pass", ["http://$console_cpa"])], as if the location
    proxied by itself, so that a test checks where each route goes the same way for both forms.
    """
    named = handoffs(block)
    out = []
    for location in (d for d in block if d["directive"] == "location"):
        args = location["args"]
        if args[0].startswith("@") or slash_redirect(location):
            continue
        modifier, path = (args[0], args[1]) if len(args) == 2 else ("", args[0])
        body = [(d["directive"], d["args"]) for d in location["block"]]
        if len(body) == 1 and body[0][0] == "return" and body[0][1][0] in BY_CODE:
            target = BY_CODE[body[0][1][0]]
            assert target in named.values(), f"{path}: no named location for {target}"
            body = [("proxy_pass", [f"http://${render.variable_name(target)}"])]
        out.append((modifier, path, body))
    return out
