"""The package's layers: imports point only down the stack

    cli -> pipeline -> zobnn -> hw -> reliability, nn -> core

(reliability and nn side by side: neither imports the other). The import graph is read from the
source with ``ast``, imports inside functions included.
"""
from __future__ import annotations

import ast
from pathlib import Path

import flow

ROOT = Path(flow.__file__).parent
LEVEL = {"core": 0, "nn": 1, "reliability": 1, "hw": 2, "zobnn": 3, "pipeline": 4, "cli": 5}


def _package(module: str) -> str | None:
    """``flow.hw.rtl`` -> ``hw``; ``flow`` itself (its version) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "flow" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import (use flow.<package>)")
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return [(n, m) for n, m in out if m == "flow" or m.startswith("flow.")]


def test_every_module_sits_in_a_layer():
    loose = [p.name for p in ROOT.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside the sub-packages: {loose}"
    assert {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} == set(LEVEL)


def test_imports_point_down_the_stack():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        src = path.relative_to(ROOT).parts[0]
        if src not in LEVEL:
            continue
        for line, module in _imports(path):
            dst = _package(module)
            if dst is None or dst == src:
                continue
            if dst not in LEVEL:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {module} is no layer")
            elif LEVEL[dst] >= LEVEL[src]:
                way = "sideways" if LEVEL[dst] == LEVEL[src] else "upward"
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {way} import of {module}")
    assert not bad, "\n".join(bad)
