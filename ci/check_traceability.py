"""Traceability gate: every MUST in .specs/ has an ID, a requirements/*.yaml entry, and at
least one test that names it and asserts something; every mapped test and code file exists;
and, given the results of a run, at least one of an ID's mapped tests passed in that run.

    python ci/check_traceability.py            # exit 1 with one line per problem
    python ci/check_traceability.py --results R  # also: proven by tests that passed in the
                                               # run that wrote R (ORCH_TEST_RESULTS=R pytest)
    python ci/check_traceability.py --refresh  # rewrite each ID's `tests` list from the
                                               # tests that name it (spec and code stay)
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ID = re.compile(r"OC-[A-Z]+-\d{4}")
REQ_LINE = re.compile(r"^- \*\*(OC-[A-Z]+-\d{4})\*\*(.*)")


def spec_requirements() -> tuple[dict[str, str], list[str]]:
    """IDs stated with MUST, and problems (a MUST bullet without an ID)."""
    ids: dict[str, str] = {}
    problems: list[str] = []
    for spec in sorted((ROOT / ".specs").rglob("*.md")):
        bullets: list[str] = []
        for line in spec.read_text().splitlines():
            if line.startswith("- "):
                bullets.append(line)
            elif bullets and line.startswith("  "):
                bullets[-1] += " " + line.strip()
        for bullet in bullets:
            match = REQ_LINE.match(bullet)
            if match:
                if "MUST" in match.group(2):
                    ids[match.group(1)] = spec.name
            elif " MUST " in bullet:
                problems.append(f"{spec.name}: a MUST without an ID: {bullet[:80]}")
    return ids, problems


def asserts(node: ast.AST) -> bool:
    """Whether a test checks anything: an `assert`, `pytest.raises`/`fail`, or a call to an
    `assert_*` helper. A test emptied down to its docstring proves nothing."""
    for child in ast.walk(node):
        if isinstance(child, ast.Assert):
            return True
        if isinstance(child, ast.Call):
            func = child.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("raises", "fail") or name.startswith("assert"):
                return True
    return False


def named_by_tests(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str]]:
    """ID -> `path::name` of tests whose docstring (or module docstring) names it; and the
    tests that name an ID but assert nothing."""
    found: dict[str, set[str]] = {}
    hollow: list[str] = []
    for path in sorted((root / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(root)
        module_ids = ID.findall(ast.get_docstring(tree) or "")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                ids = ID.findall(ast.get_docstring(node) or "")
                if isinstance(node, ast.ClassDef) and not ids:
                    ids = module_ids  # e.g. a hypothesis state machine proves the module's IDs
                if ids and not asserts(node):
                    hollow.append(f"{rel}::{node.name} names {ids[0]} but asserts nothing")
                    continue
                for i in ids:
                    found.setdefault(i, set()).add(f"{rel}::{node.name}")
    return found, hollow


def passed_in(results: Path) -> set[str]:
    """`path::name` of every test that passed in the run that wrote `results` (a parametrized
    test counts once any case passed; `TestX` counts for the state machine `X`)."""
    passed: set[str] = set()
    for nodeid in json.loads(results.read_text())["passed"]:
        path, name = nodeid.split("::")[:2]  # the module-level test (or test class)
        name = name.split("[", 1)[0]
        passed.add(f"{path}::{name}")
        if name.startswith("Test"):
            passed.add(f"{path}::{name[4:]}")
    return passed


def refresh() -> None:
    tests, _ = named_by_tests()
    for path in sorted((ROOT / "requirements").glob("*.yaml")):
        text = path.read_text()
        header = "".join(line for line in text.splitlines(True) if line.startswith("#"))
        data = yaml.safe_load(text) or {}
        for req_id, entry in data.items():
            entry["tests"] = sorted(tests.get(req_id, set()))
        path.write_text(header + yaml.safe_dump(data, sort_keys=False, width=120))


def main() -> int:
    if "--refresh" in sys.argv:
        refresh()
    ids, problems = spec_requirements()
    tests, hollow = named_by_tests()
    problems += hollow
    results = Path(sys.argv[sys.argv.index("--results") + 1]) if "--results" in sys.argv else None
    passed = passed_in(results) if results is not None else None
    mapped: dict[str, dict[str, object]] = {}
    for path in sorted((ROOT / "requirements").glob("*.yaml")):
        for req_id, entry in (yaml.safe_load(path.read_text()) or {}).items():
            mapped[req_id] = entry
            for test in entry.get("tests", []):
                if test not in tests.get(req_id, set()):
                    problems.append(
                        f"{path.name}: {req_id}: {test} does not exist or does not name the ID"
                    )
            for code in entry.get("code", []):
                if not (ROOT / code).exists():
                    problems.append(f"{path.name}: {req_id}: code {code} does not exist")
            if req_id not in ids:
                problems.append(f"{path.name}: {req_id} is not a MUST in .specs/")
    for req_id, spec in sorted(ids.items()):
        if not tests.get(req_id):
            problems.append(f"{spec}: {req_id} has no test that names it")
        if req_id not in mapped:
            problems.append(f"{spec}: {req_id} is missing from requirements/*.yaml")
        elif not mapped[req_id].get("tests"):
            problems.append(f"{spec}: {req_id} maps no tests in requirements/")
        elif passed is not None and not passed.intersection(mapped[req_id]["tests"]):
            problems.append(f"{spec}: {req_id}: none of its tests passed in this run")
    for line in problems:
        print(line)
    print(f"traceability: {len(ids)} requirements, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
