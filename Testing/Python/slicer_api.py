"""Which Slicer/Qt/CTK API OrthoDiffusion.py uses, found with ``ast`` (shared by the API-table test
and scripts/build_slicer_api_table.py).

A use is a dotted chain rooted at ``slicer``, ``qt``, ``ctk`` or ``SampleData`` (``()`` marks a call
inside the chain: ``slicer.modules.plots.logic().ShowChartInLayout``), or a name imported from a
``slicer.*`` module. Each use carries the keyword arguments it passes and the Slicer version its
enclosing ``if slicerVersion() >= (X, Y):`` guarantees (None: only the module's minimum).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

ROOTS = ("slicer", "qt", "ctk", "SampleData")


@dataclass
class Use:
    symbol: str
    line: int
    keywords: tuple = ()
    guard: tuple | None = None
    sites: list = field(default_factory=list)


def _chain(node) -> str | None:
    parts = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call):
            parts.append("()")
            node = node.func
        elif isinstance(node, ast.Name):
            parts.append(node.id)
            break
        else:
            return None
    parts.reverse()
    if parts[0] not in ROOTS or len(parts) < 2:
        return None
    text = ".".join(parts).replace(".()", "()")
    return text[:-2] if text.endswith("()") else text


def _guard(test) -> tuple | None:
    """(X, Y) of ``slicerVersion() >= (X, Y)``."""
    if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.GtE)
            and isinstance(test.left, ast.Call) and getattr(test.left.func, "id", None) == "slicerVersion"):
        return tuple(ast.literal_eval(test.comparators[0]))
    return None


def minimum_version(tree) -> tuple:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "MINIMUM_SLICER" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("OrthoDiffusion.py declares no MINIMUM_SLICER")


def collect(source: str) -> list:
    """Every use, outermost chain only (``slicer.util.exportNode`` rather than ``slicer.util`` too)."""
    tree = ast.parse(source)
    uses = []

    def visit(node, guard):
        if isinstance(node, ast.If):
            g = _guard(node.test)
            visit(node.test, guard)
            for child in node.body:
                visit(child, max(filter(None, (guard, g)), default=None))
            for child in node.orelse:
                visit(child, guard)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "slicer" \
                and node.module != "slicer":
            for alias in node.names:
                uses.append(Use(f"{node.module}.{alias.name}", node.lineno, guard=guard))
            return
        if isinstance(node, (ast.Attribute, ast.Call)):
            symbol = _chain(node)
            if symbol:
                kws = tuple(k.arg for k in node.keywords if k.arg) if isinstance(node, ast.Call) else ()
                uses.append(Use(symbol, node.lineno, kws, guard))
                inner = node.func if isinstance(node, ast.Call) else None
                for arg in [*(node.args if isinstance(node, ast.Call) else []),
                            *(k.value for k in node.keywords)] if isinstance(node, ast.Call) else []:
                    visit(arg, guard)
                _visit_chain_args(inner, guard)
                return
        for child in ast.iter_child_nodes(node):
            visit(child, guard)

    def _visit_chain_args(node, guard):
        # arguments of calls inside a chain: slicer.app.layoutManager().sliceWidget(cue.view)
        while isinstance(node, (ast.Attribute, ast.Call)):
            if isinstance(node, ast.Call):
                for arg in [*node.args, *(k.value for k in node.keywords)]:
                    visit(arg, guard)
                node = node.func
            else:
                node = node.value

    for top in tree.body:
        visit(top, None)
    return uses


def merged(uses: list) -> dict:
    """symbol -> Use with every keyword seen and the weakest guard (None beats any version)."""
    out = {}
    for u in uses:
        m = out.setdefault(u.symbol, Use(u.symbol, u.line, (), u.guard))
        m.keywords = tuple(sorted(set(m.keywords) | set(u.keywords)))
        m.sites.append((u.line, u.keywords, u.guard))
        if u.guard is None or (m.guard is not None and u.guard < m.guard):
            m.guard = u.guard
    return out
