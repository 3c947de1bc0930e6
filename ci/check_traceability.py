"""Traceability gate: every MUST in .specs/ has an ID, a requirements/*.yaml entry, and at
least one test that names it; every mapped test and code file exists.

    python ci/check_traceability.py            # exit 1 with one line per problem
    python ci/check_traceability.py --refresh  # rewrite each ID's `tests` list from the
                                               # tests that name it (spec and code stay)
"""

from __future__ import annotations

import ast
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


def named_by_tests() -> dict[str, set[str]]:
    """ID -> `path::name` of tests whose docstring (or module docstring) names it."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(ROOT)
        module_ids = ID.findall(ast.get_docstring(tree) or "")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                ids = ID.findall(ast.get_docstring(node) or "")
                if isinstance(node, ast.ClassDef) and not ids:
                    ids = module_ids  # e.g. a hypothesis state machine proves the module's IDs
                for i in ids:
                    found.setdefault(i, set()).add(f"{rel}::{node.name}")
    return found


def refresh() -> None:
    tests = named_by_tests()
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
    tests = named_by_tests()
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
    for line in problems:
        print(line)
    print(f"traceability: {len(ids)} requirements, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
