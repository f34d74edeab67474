"""Route templates: the ``endpoint`` of an event, never the raw path.

``path()`` routes come straight from ``request.resolver_match.route`` (Django joins the ``include()``
prefixes): ``api/v1/items/<int:item_id>`` becomes ``/api/v1/items/<int:item_id>``. ``re_path()`` regexes are
simplified to named placeholders: ``^articles/(?P<year>[0-9]{4})/$`` becomes ``/articles/<year>/`` (an
unnamed group becomes ``<arg1>``, ``<arg2>``, …). A request that matched no route gets
:data:`dodo_ingest.config.UNMATCHED_ENDPOINT`.

Templates are computed once per distinct route and cached (routes come from the URLconf, so the cache
is bounded by its size).
"""

from __future__ import annotations

import re
from typing import Any

from django.urls import Resolver404, get_resolver

from dodo_ingest.config import UNMATCHED_ENDPOINT

__all__ = ["UNMATCHED_ENDPOINT", "resolve_route", "route_of", "template_for"]

_cache: dict[str, str] = {}
_CACHE_LIMIT = 10_000  # far above any real URLconf; only a guard against generated routes

_ANCHOR_ESCAPES = frozenset({"\\A", "\\Z", "\\z", "\\b", "\\B"})


def template_for(route: str) -> str:
    """The endpoint template of a ``ResolverMatch.route`` string (cached)."""
    template = _cache.get(route)
    if template is None:
        template = _simplify(route)
        if len(_cache) < _CACHE_LIMIT:
            _cache[route] = template
    return template


def route_of(request: Any) -> str | None:
    """The endpoint template of a request the URL resolver matched, or None if it matched nothing."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        return None
    route = match.route
    if route is None:
        return None
    return template_for(route)


def resolve_route(request: Any) -> str | None:
    """Resolve a request's path now (for responses returned before URL resolution); None if no route.

    Used only when a middleware short-circuited the request before Django resolved its URL.
    """
    try:
        match = get_resolver(getattr(request, "urlconf", None)).resolve(request.path_info)
    except Resolver404:
        return None
    route = match.route
    return template_for(route) if route is not None else None


def _simplify(route: str) -> str:
    """Turn a (possibly regex) route into ``/segment/<name>/...``."""
    if not _looks_like_regex(route):
        return "/" + route.lstrip("/")
    counter = [0]
    text = _simplify_regex(route, counter)
    text = re.sub(r"(?:<param>)+", "<param>", text)
    return "/" + text.lstrip("/")


def _simplify_regex(pattern: str, counter: list[int]) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            pair = pattern[i : i + 2]
            if pair in _ANCHOR_ESCAPES:
                pass
            elif pair[1:].isalnum():  # \d, \w, \s, ...: a class of characters
                out.append("<param>")
            else:  # an escaped literal such as \. or \-
                out.append(pair[1:])
            i += 2
        elif char == "(":
            end = _group_end(pattern, i)
            group = pattern[i : end + 1]
            if group.startswith("(?P<"):
                out.append("<" + group[4 : group.index(">")] + ">")
            elif group.startswith("(?:"):
                inner = group[3:-1]
                out.append("<param>" if "|" in inner else _simplify_regex(inner, counter))
            elif not group.startswith("(?"):
                counter[0] += 1
                out.append(f"<arg{counter[0]}>")
            # lookarounds and inline flags ((?=...), (?i)) add nothing to a template
            i = _skip_quantifier(pattern, end + 1)
        elif char == "[":
            end = _class_end(pattern, i)
            out.append("<param>")
            i = _skip_quantifier(pattern, end + 1)
        elif char == ".":
            out.append("<param>")
            i = _skip_quantifier(pattern, i + 1)
        elif char in "^$":
            i += 1
        elif char in "?*+{":
            i = _skip_quantifier(pattern, i)
        elif char == "|":
            return "<param>"  # an alternation at the top level: no single template
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _skip_quantifier(pattern: str, i: int) -> int:
    """Index after a quantifier (``?``, ``*``, ``+``, ``{m,n}``, with a lazy/possessive suffix) at ``i``."""
    if i < len(pattern) and pattern[i] == "{":
        close = pattern.find("}", i)
        i = close + 1 if close != -1 else i + 1
    elif i < len(pattern) and pattern[i] in "?*+":
        i += 1
    else:
        return i
    if i < len(pattern) and pattern[i] in "?+":
        i += 1
    return i


def _class_end(pattern: str, start: int) -> int:
    """Index of the ``]`` closing the character class opened at ``start``."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i
        i += 1
    return len(pattern) - 1


def _looks_like_regex(route: str) -> bool:
    return route.startswith("^") or "(?P<" in route or route.endswith("$") or "\\" in route


def _group_end(text: str, start: int) -> int:
    """Index of the parenthesis closing the group opened at ``start`` (escapes and classes respected)."""
    depth = 0
    i = start
    in_class = False
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(text) - 1
