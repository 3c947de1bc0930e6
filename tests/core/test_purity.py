"""OC-CORE-1001: orchestrator_core imports nothing that does I/O or reads the clock."""

import ast
import pathlib

import orchestrator_core

ALLOWED = {
    "__future__",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "hashlib",  # block names for prefix-aware placement: pure computation
    "heapq",
    "itertools",
    "math",
    "typing",
    "sortedcontainers",
    "orchestrator_core",
}


def test_core_imports_only_pure_modules():
    """OC-CORE-1001"""
    root = pathlib.Path(orchestrator_core.__file__).parent
    seen = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                seen.add(top)
                assert top in ALLOWED, f"{path.name} imports {name}"
    assert "orchestrator_core" in seen
