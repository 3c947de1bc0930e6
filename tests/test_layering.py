"""OC-TEST-8005: dependencies point one way — between packages, between the daemon's
stages, and from the client wing to nothing but the API models — with no import cycle.

Read from the source (AST), like tests/core/test_purity.py. Imports under
`if TYPE_CHECKING:` are annotations, not dependencies; imports inside functions count.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator_core", "worker_adapters", "pool_managerd", "orchestratord")

#: Which of our packages each package may import (ARCHITECTURE.md, dependency direction).
MAY_IMPORT = {
    "orchestrator_core": {"orchestrator_core"},
    "worker_adapters": {"worker_adapters", "orchestrator_core"},
    "pool_managerd": {"pool_managerd", "worker_adapters", "orchestrator_core"},
    "orchestratord": set(PACKAGES),
}

#: The daemon's modules, top to bottom: a module imports only modules of later rows (a
#: package's `__init__` may also re-export its own modules). A new module must be placed.
STAGES: tuple[tuple[str, ...], ...] = (
    ("orchestratord.cli",),
    ("orchestratord.daemon", "orchestratord.defaults"),
    ("orchestratord.api.app", "orchestratord.leadership"),
    ("orchestratord.api.standby",),
    ("orchestratord.api.data_plane", "orchestratord.api.control_plane",
     "orchestratord.api.openai_door", "orchestratord.api.provider_states",
     "orchestratord.api.batch_api", "orchestratord.api.access"),
    ("orchestratord.api.streaming",),
    ("orchestratord.api.connections", "orchestratord.api.listener"),
    ("orchestratord.api.sse",),
    ("orchestratord.api.openapi",),
    ("orchestratord.api.errors", "orchestratord.api.http"),
    ("orchestratord.api.bodies", "orchestratord.api.answers"),
    ("orchestratord.api.operations",),
    ("orchestratord.api",),
    ("orchestratord.service", "orchestratord.service.orchestrator"),
    ("orchestratord.service.batches",),
    ("orchestratord.service.batch_output",),
    ("orchestratord.service.batch_files",),
    ("orchestratord.service.batch_input",),
    ("orchestratord.service.openai_requests",),
    ("orchestratord.service.admission", "orchestratord.service.views"),
    ("orchestratord.service.quotas",),
    ("orchestratord.service.recovery",),
    ("orchestratord.service.dispatcher",),
    ("orchestratord.service.replicas",),
    ("orchestratord.service.runner", "orchestratord.service.placement"),
    ("orchestratord.service.tasks",),
    ("orchestratord.service.records",),
    ("orchestratord.service.journal",),
    ("orchestratord.service.refusal", "orchestratord.service.streams"),
    ("orchestratord.service.output",),
    ("orchestratord.store", "orchestratord.store.lease"),
    ("orchestratord.store.sqlite", "orchestratord.store.memory", "orchestratord.store.postgres"),
    ("orchestratord.store.sql",),
    ("orchestratord.store.statements", "orchestratord.store.base"),
    ("orchestratord.config",),
    ("orchestratord.server_config",),
    ("orchestratord.keyring",),
    ("orchestratord.principals",),
    ("orchestratord.engines", "orchestratord.chat_template"),
    ("orchestratord.telemetry", "orchestratord.telemetry.metrics",
     "orchestratord.telemetry.tracing"),
    ("orchestratord.telemetry.series", "orchestratord.telemetry.loop_lag"),
    ("orchestratord.api_models", "orchestratord.openai_models", "orchestratord.batch_models",
     "orchestratord.agent_models", "orchestratord"),
)  # fmt: skip

#: The client wing (SDK, orchctl, determinism suite) ships apart from the server.
CLIENT = "orchestratord.client"
CLIENT_MAY_IMPORT = (
    "orchestratord.api_models",
    "orchestratord.batch_models",
    "orchestratord.agent_models",
)

Graph = dict[str, set[str]]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, known: set[str]) -> set[str]:
    """The modules of ours that `tree` imports at run time."""
    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # `from pkg import module` names the module itself
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
        pending.extend(ast.iter_child_nodes(node))
    return {name for name in found if name.split(".")[0] in PACKAGES}


def import_graph() -> Graph:
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    known = {_module_name(p) for p in paths}
    return {_module_name(p): _imported(ast.parse(p.read_text()), known) for p in paths}


def _package_direction(graph: Graph) -> list[str]:
    return [
        f"{src} imports {dst}: {src.split('.')[0]} may not depend on {dst.split('.')[0]}"
        for src, targets in graph.items()
        for dst in targets
        if dst.split(".")[0] not in MAY_IMPORT[src.split(".")[0]]
    ]


def _stage_order(graph: Graph) -> list[str]:
    row = {module: i for i, modules in enumerate(STAGES) for module in modules}
    problems = []
    for src, targets in graph.items():
        if not src.startswith("orchestratord") or src.startswith(CLIENT):
            continue
        if src not in row:
            problems.append(f"{src} is not placed in STAGES (tests/test_layering.py)")
            continue
        for dst in targets:
            own_module = dst.startswith(src + ".")  # a package re-exporting its modules
            if dst in row and row[dst] <= row[src] and not own_module:
                problems.append(f"{src} imports {dst}: an arrow against the stage order")
    return problems


def _client_wing(graph: Graph) -> list[str]:
    problems = []
    for src, targets in graph.items():
        for dst in targets:
            if src.startswith(CLIENT):
                if not (dst.startswith(CLIENT) or dst in CLIENT_MAY_IMPORT):
                    problems.append(f"{src} imports {dst}: the client wing imports only "
                                    f"{', '.join(CLIENT_MAY_IMPORT)}")  # fmt: skip
            elif dst.startswith(CLIENT):
                problems.append(f"{src} imports {dst}: the server never imports the client")
    return problems


def _cycles(graph: Graph) -> list[str]:
    """One line per import cycle found (depth-first search, each cycle reported once)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dst in sorted(graph.get(module, ())):
            if state.get(dst) == 1:
                cycle = [*path[path.index(dst) :], dst]
                found.append("import cycle: " + " -> ".join(cycle))
            elif dst not in state:
                visit(dst)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def problems(graph: Graph) -> list[str]:
    return _package_direction(graph) + _stage_order(graph) + _client_wing(graph) + _cycles(graph)


def test_dependencies_point_one_way():
    """OC-TEST-8005"""
    graph = import_graph()
    assert "orchestratord.service.dispatcher" in graph  # the walk found the daemon
    assert problems(graph) == []


def test_the_checks_catch_what_they_guard_against():
    """OC-TEST-8005"""
    graph = import_graph()
    planted = {
        # the runner calling back into the dispatcher
        "orchestratord.service.runner": {"orchestratord.service.dispatcher"},
        # the client reaching into the engine side
        "orchestratord.client.orchctl": {"pool_managerd.tiny_gguf"},
        # the core importing the daemon
        "orchestrator_core.queue": {"orchestratord.config"},
        # a module nobody placed
        "orchestratord.service.sneaky": set(),
    }
    found = "\n".join(problems({**graph, **planted}))
    assert "service.runner imports orchestratord.service.dispatcher: an arrow against" in found
    assert "client.orchctl imports pool_managerd.tiny_gguf: the client wing" in found
    assert "orchestrator_core may not depend on orchestratord" in found
    assert "orchestratord.service.sneaky is not placed" in found
    assert "import cycle: " in found
    cycle = {"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}
    assert _cycles(cycle) == ["import cycle: a.x -> a.y -> a.z -> a.x"]
