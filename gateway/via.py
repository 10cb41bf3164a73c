"""This deployment's ``Via`` entry (RFC 9110 §7.6.3), and the loop check that reads it.

Every request the traffic path forwards gets ``Via: 1.1 <name>`` appended
(:func:`gateway.forwarding.forwarded_headers`), ``<name>`` being ``VIA_NAME``
(default ``creditgate``). Every replica of a deployment writes the same name, so a
request that comes back through any of them (an upstream pointing at the gateway) is
recognised and refused 508 (:func:`gateway.traffic_rules.check_loop`, on both ports).

The check compares each entry's *received-by* (its second field, after the protocol)
with the name, whole and case-insensitively: never a substring, so an unrelated proxy
whose name merely contains it (``creditgate-ingress.example.net``,
``my-creditgateway``) or a comment naming it (``1.0 foo (creditgate)``) is not a loop.
Comments are taken out before the list is split at its commas (a comment may hold a
comma). Two deployments chained (one's bot behind the other) tell each other apart
when their names differ.

The name is set once per process, when its applications are built
(:func:`gateway.app.create_app`, from settings); both traffic servers read it here.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_NAME = "creditgate"

name = DEFAULT_NAME  # this deployment's received-by (VIA_NAME)
entry = "1.1 " + DEFAULT_NAME  # what the gateway appends to Via
_folded = DEFAULT_NAME.lower()


def name_via(new: str) -> None:
    """Make ``new`` this process's received-by (see the module)."""
    global name, entry, _folded
    name, entry, _folded = new, "1.1 " + new, new.lower()


def entries(values: Iterable[str]) -> list[tuple[str, str]]:
    """The (protocol, received-by) of each entry of the ``Via`` lines ``values``, their
    comments out."""
    out = []
    for value in values:
        if "(" in value:
            value = _without_comments(value)
        for part in value.split(","):
            fields = part.split()
            if len(fields) >= 2:
                out.append((fields[0], fields[1]))
    return out


def received_by(values: Iterable[str]) -> list[str]:
    """The received-by of each entry of the ``Via`` lines ``values``, comments out."""
    return [by for _, by in entries(values)]


def forwarded(values: Iterable[str]) -> str:
    """The ``Via`` to send on: the request's entries rebuilt without their comments, then
    this deployment's. Never the client's text as it came: an unclosed comment there
    would swallow the entry appended after it, and the loop would pass unseen."""
    return ", ".join([*(f"{proto} {by}" for proto, by in entries(values)), entry])


def passed_here(values: Iterable[str]) -> bool:
    """Whether ``values`` (the request's ``Via`` lines) hold this deployment's entry.
    A line that does not hold the name at all is not parsed (a long hostile one costs
    one case fold)."""
    lines = [v for v in values if _folded in v.lower()]
    return bool(lines) and any(by.lower() == _folded for by in received_by(lines))


def _without_comments(value: str) -> str:
    """``value`` without its comments (RFC 9110 §5.6.5: nested ones, a backslash quotes
    the next character), in one pass (a hostile header's nesting costs no more than its
    length). A comment left unclosed hides nothing: then only the parentheses go (an
    entry after it, such as the one the gateway appended, stays an entry)."""
    out, depth, quoted = [], 0, False
    for ch in value:
        if depth:
            if quoted:
                quoted = False
            elif ch == "\\":
                quoted = True
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        elif ch == "(":
            depth = 1
        else:
            out.append(ch)
    if depth:
        return value.replace("(", " ").replace(")", " ")
    return "".join(out)
