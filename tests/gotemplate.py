"""A small evaluator for the part of Go's text/template language that cuvee's Ollama templates
use (variables, printf "%s", range over .Messages, if / else if / else with eq), so tests can
check that a Modelfile TEMPLATE renders what the Jinja chat template renders. It fails loudly on
anything outside that subset."""

from __future__ import annotations

import re
import shlex
from typing import Any

_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.S)


def _tokens(source: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    for m in _ACTION.finditer(source):
        if "{{-" in m.group(0) or "-}}" in m.group(0):
            raise ValueError("whitespace trimming is outside the supported subset")
        if m.start() > pos:
            out.append(("text", source[pos : m.start()]))
        out.append(("action", m.group(1)))
        pos = m.end()
    if pos < len(source):
        out.append(("text", source[pos:]))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, stop=("end",)):
    """Nodes until one of ``stop`` keywords; returns (nodes, index of the stop, its action)."""
    nodes: list[Any] = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(("text", value))
            i += 1
            continue
        word = value.split()[0]
        if word in stop or (word == "else" and "else" in stop):
            return nodes, i, value
        if word == "range":
            body, i, _ = _parse(tokens, i + 1, ("end",))
            nodes.append(("range", value[len("range") :].strip(), body))
            i += 1
        elif word == "if":
            branches = []
            cond = value[len("if") :].strip()
            while True:
                body, i, closing = _parse(tokens, i + 1, ("end", "else"))
                branches.append((cond, body))
                if closing == "end":
                    break
                rest = closing[len("else") :].strip()
                cond = rest[len("if") :].strip() if rest.startswith("if") else None
            nodes.append(("if", branches))
            i += 1
        else:
            nodes.append(("expr", value))
            i += 1
    return nodes, i, None


def _value(term: str, scope: dict[str, Any], dot: Any) -> Any:
    if term.startswith('"'):
        return shlex.split(term)[0].encode().decode("unicode_escape")
    if term.startswith("$"):
        name, _, field = term.partition(".")
        base = scope[name]
        return base[field] if field else base
    if term.startswith("."):
        return dot[term[1:]]
    raise ValueError(f"unsupported term {term!r}")


def _call(expr: str, scope, dot) -> Any:
    parts = re.findall(r'"(?:\\.|[^"])*"|\S+', expr)
    if parts[0] == "eq":
        return _value(parts[1], scope, dot) == _value(parts[2], scope, dot)
    if parts[0] == "printf":
        fmt = _value(parts[1], scope, dot)
        return fmt.replace("%s", "{}").format(*(_value(p, scope, dot) for p in parts[2:]))
    if len(parts) == 1:
        return _value(parts[0], scope, dot)
    raise ValueError(f"unsupported expression {expr!r}")


def _run(nodes, scope: dict[str, Any], dot: Any, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            expr = node[1]
            m = re.fullmatch(r"(\$\w+)\s*(:?=)\s*(.+)", expr)
            if m:
                scope[m.group(1)] = _call(m.group(3), scope, dot)
            else:
                out.append(str(_call(expr, scope, dot)))
        elif node[0] == "range":
            header = node[1]
            m = re.fullmatch(r"\$(\w+),\s*\$(\w+)\s*:=\s*(\S+)", header)
            items = _value(m.group(3) if m else header, scope, dot)
            for index, item in enumerate(items):
                if m:
                    scope["$" + m.group(1)], scope["$" + m.group(2)] = index, item
                _run(node[2], scope, item, out)
        elif node[0] == "if":
            for cond, body in node[1]:
                if cond is None or _call(cond, scope, dot):
                    _run(body, scope, dot, out)
                    break


def render(source: str, messages: list[dict[str, str]]) -> str:
    nodes, _, _ = _parse(_tokens(source), 0, ())
    out: list[str] = []
    data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    _run(nodes, {}, data, out)
    return "".join(out)
