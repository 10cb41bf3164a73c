"""The import graph of the product: three floors, arrows one way, no cycle.

``gateway -> meter -> config``; inside ``meter`` the subpackages are layered too (see
:data:`LAYERS`). Imports are read from the source with :mod:`ast` (function-level and
``TYPE_CHECKING`` imports included), so a backward import fails here before it can
become a cycle. ``python tests/unit/test_layers.py`` rewrites docs/imports.md from the same
graph; :func:`test_docs_graph_is_current` keeps that drawing true.
"""

from __future__ import annotations

import ast
import graphlib
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "meter", "config")
DOC = ROOT / "docs" / "imports.md"

# Lowest first. A unit imports only units of lower layers (and itself). ``meter`` alone
# is the package's top-level modules (errors, timestamps): shared by every subpackage.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("config",),
    ("meter",),
    ("meter.store", "meter.redis_layer"),
    ("meter.admission", "meter.accounts"),
    ("meter.usage",),
    ("gateway",),
)
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
# Third-party packages a floor must not use.
FORBIDDEN = {"meter": ("aiohttp",), "config": ("aiohttp", "redis", "asyncpg")}


def modules() -> dict[str, Path]:
    """Every product module by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for top in PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imported(path: Path, name: str, known: dict[str, Path]) -> Iterator[str]:
    """Dotted names a module imports (``from pkg import mod`` names ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for a in node.names:
                sub = f"{base}.{a.name}"
                yield sub if sub in known else base


def graph() -> dict[str, set[str]]:
    """Module -> the product modules and third-party top-level packages it imports."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for target in imported(path, name, known):
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def unit(module: str) -> str:
    """The layer unit a module belongs to: a meter subpackage, else its top package."""
    parts = module.split(".")
    if parts[0] == "meter" and len(parts) > 1 and f"meter.{parts[1]}" in RANK:
        return f"meter.{parts[1]}"
    return parts[0]


def unit_edges() -> dict[tuple[str, str], list[str]]:
    """(from unit, to unit) -> the module imports behind that arrow."""
    out: dict[tuple[str, str], list[str]] = {}
    for src, targets in graph().items():
        for dst in targets:
            a, b = unit(src), unit(dst)
            if a != b and b in RANK:
                out.setdefault((a, b), []).append(f"{src} -> {dst}")
    return out


def test_every_module_has_a_layer() -> None:
    assert sorted({unit(m) for m in modules()} - set(RANK)) == []


def backward(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    """The imports of ``edges`` that go sideways or up the layers."""
    return [line for (a, b), lines in sorted(edges.items()) if RANK[b] >= RANK[a] for line in lines]


def test_no_backward_import() -> None:
    assert backward(unit_edges()) == [], "imports against the layer order (LAYERS)"


def test_floors_keep_off_forbidden_packages() -> None:
    bad = [
        f"{src} imports {dst}"
        for src, targets in graph().items()
        for dst in targets
        if dst.split(".")[0] in FORBIDDEN.get(src.split(".")[0], ())
    ]
    assert bad == []


def test_no_import_cycle_between_modules() -> None:
    edges = graph()
    product = {m: {t for t in ts if t in edges} for m, ts in edges.items()}
    graphlib.TopologicalSorter(product).prepare()  # raises CycleError naming the cycle


def test_a_backward_import_is_caught(tmp_path: Path) -> None:
    """The check itself: imports read from source, then judged by layer."""
    src = tmp_path / "m.py"
    src.write_text(
        "import aiohttp\nfrom gateway.app import create_app\n"
        "def f():\n    from meter.usage import flusher\n    from . import projection\n"
    )
    names = set(imported(src, "meter.accounts.m", modules()))
    assert names == {"aiohttp", "gateway.app", "meter.usage.flusher", "meter.accounts.projection"}
    edges = {
        ("meter.accounts", "gateway"): ["up"],
        ("meter.accounts", "meter.usage"): ["up a floor"],
        ("meter.accounts", "meter.admission"): ["sideways"],
        ("meter.accounts", "meter.redis_layer"): ["down"],
    }
    assert backward(edges) == ["up", "sideways", "up a floor"]


def mermaid() -> str:
    """The unit graph as a mermaid flowchart, layers from top (gateway) to bottom."""
    lines = ["flowchart TD"]
    top = sorted(
        m.rpartition(".")[2] for m in modules() if m.count(".") == 1 and unit(m) == "meter"
    )
    for layer in reversed(LAYERS):
        for u in layer:
            label = f"meter ({', '.join(top)})" if u == "meter" else u
            lines.append(f'    {u.replace(".", "_")}["{label}"]')
    for a, b in sorted(unit_edges()):
        lines.append(f"    {a.replace('.', '_')} --> {b.replace('.', '_')}")
    return "\n".join(lines)


def document() -> str:
    layers = "\n".join(
        f"{i + 1}. " + ", ".join(f"`{u}`" for u in layer) for i, layer in enumerate(LAYERS)
    )
    return (
        "# Import graph\n\n"
        "Generated by `python tests/unit/test_layers.py` from the source (imports read with\n"
        "`ast`); `tests/unit/test_layers.py` fails when this drawing is stale, when an import\n"
        "goes against the layers below, or when modules import each other in a cycle.\n\n"
        "Layers, lowest first; a unit imports only from lower layers:\n\n"
        f"{layers}\n\n"
        "`meter` never imports aiohttp; `config` imports neither aiohttp nor Redis.\n\n"
        f"```mermaid\n{mermaid()}\n```\n"
    )


def test_docs_graph_is_current() -> None:
    assert DOC.read_text() == document(), "stale: run `python tests/unit/test_layers.py`"


if __name__ == "__main__":
    DOC.write_text(document())
    sys.stdout.write(f"wrote {DOC.relative_to(ROOT)}\n")
