"""The metrics contract: derive ci/metrics.lint.json from .specs/metrics/otel-prom.md, and
lint a Prometheus exposition against it.

    python ci/metrics_lint.py --write           # regenerate ci/metrics.lint.json
    python ci/metrics_lint.py --check           # the JSON matches the spec
    python ci/metrics_lint.py SCRAPE.txt        # lint a scrape (exit 1 on problems)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / ".specs" / "metrics" / "otel-prom.md"
LINT = ROOT / "ci" / "metrics.lint.json"


def from_spec() -> dict[str, dict[str, object]]:
    rules: dict[str, dict[str, object]] = {}
    for line in SPEC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("name", "") or set(cells[0]) <= {"-"}:
            continue
        name, kind, unit, labels, budget = cells
        rules[name] = {
            "type": kind,
            "unit": unit,
            "labels": sorted(x.strip() for x in labels.split(",") if x.strip()),
            "max_series": int(budget),
        }
    return rules


def lint(scrape: str, rules: dict[str, dict[str, object]]) -> list[str]:
    problems = []
    seen = set()
    for family in text_string_to_metric_families(scrape):
        rule = rules.get(family.name)
        if rule is None:
            problems.append(f"{family.name}: not in the metrics contract")
            continue
        seen.add(family.name)
        if family.type != rule["type"]:
            problems.append(f"{family.name}: type {family.type}, contract says {rule['type']}")
        series = set()
        for sample in family.samples:
            labels = sorted(k for k in sample.labels if k not in ("le", "quantile"))
            if labels and labels != rule["labels"]:
                problems.append(f"{family.name}: labels {labels}, contract says {rule['labels']}")
            series.add(tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le")))
        if len(series) > int(rule["max_series"]):  # type: ignore[call-overload]
            problems.append(
                f"{family.name}: {len(series)} series over its budget {rule['max_series']}"
            )
    problems += [f"{name}: missing from the scrape" for name in rules if name not in seen]
    return problems


def main(argv: list[str]) -> int:
    rules = from_spec()
    if "--write" in argv:
        LINT.write_text(json.dumps(rules, indent=2, sort_keys=True) + "\n")
        return 0
    if "--check" in argv:
        ok = LINT.exists() and json.loads(LINT.read_text()) == rules
        print(
            "metrics.lint.json matches the spec"
            if ok
            else "ci/metrics.lint.json is stale: run `python ci/metrics_lint.py --write`"
        )
        return 0 if ok else 1
    problems = lint(Path(argv[0]).read_text(), json.loads(LINT.read_text()))
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
