"""The determinism suite: a corpus of prompts x seeds, run in `strict` mode through a live
daemon on every Ready replica of a pool, compared byte for byte.

Client-side only (the SDK): `orchctl determinism --pool P` (the command at the end) runs it,
writes a proof file and exits non-zero on any mismatch, naming the first diverging case and
token. `--compare proof.json` also checks the streams against an earlier proof — how CI
proves determinism across a restart (reload) of the replicas. `--junit FILE` writes JUnit
XML for CI systems to render: one test case per prompt x seed x replica pair (and per
comparison with the earlier proof), a failure naming the first differing token.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import click

from orchestratord.client.cli_common import EXIT_CODES_HELP, EXIT_FAILED, client_of, fail, run_async
from orchestratord.client.sdk import OrchClient

CORPUS: tuple[tuple[str, str], ...] = (
    ("ascii", "The quick brown fox jumps over the lazy dog."),
    ("utf8", "naïve café — 東京の夜 🚀 Ωμέγα"),
    ("emptyish", " "),
    ("long", "lorem ipsum dolor sit amet, consectetur adipiscing elit; " * 3),
)


def corpus_hash() -> str:
    return hashlib.sha256(json.dumps(CORPUS).encode()).hexdigest()


def stream_hash(tokens: list[str]) -> str:
    # length-prefixed, so ["ab", "c"] and ["a", "bc"] differ: token boundaries count too
    h = hashlib.sha256()
    for token in tokens:
        data = token.encode()
        h.update(len(data).to_bytes(4, "big") + data)
    return h.hexdigest()


def _token(data: dict[str, Any]) -> str:
    """One token event as compared: its text, and its ids where the engine gives them."""
    ids = data.get("ids")
    return data["t"] if not ids else f"{data['t']}\x00{','.join(map(str, ids))}"


@dataclass
class Divergence:
    case: str
    seed: int
    token_index: int
    expected: str | None
    got: str | None
    where: str

    def describe(self) -> str:
        return (
            f"case {self.case!r} seed {self.seed}: token {self.token_index} differs "
            f"({self.where}): {self.expected!r} != {self.got!r}"
        )


#: The `replica` of a comparison with the earlier proof (`--compare`).
EARLIER = "earlier proof"


@dataclass(frozen=True)
class Comparison:
    """One check of the suite: a case and seed on `replica` against the reference stream
    (the first replica's, or the earlier proof's); `divergence` when they differ."""

    case: str
    seed: int
    replica: str
    divergence: Divergence | None


@dataclass
class Proof:
    pool_id: str
    engine: str
    engine_version: str
    model_digest: str
    replicas: list[str]
    max_tokens: int
    cases: list[dict[str, Any]] = field(default_factory=list)
    divergence: Divergence | None = None
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "fail" if self.divergence else "pass"

    def to_json(self) -> dict[str, Any]:
        return {
            "pool_id": self.pool_id, "engine": self.engine,
            "engine_version": self.engine_version, "model_digest": self.model_digest,
            "replicas": self.replicas, "corpus_hash": corpus_hash(),
            "max_tokens": self.max_tokens, "cases": self.cases, "verdict": self.verdict,
            "first_divergence": None if self.divergence is None else self.divergence.describe(),
        }  # fmt: skip


def _first_difference(a: list[str], b: list[str]) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


async def _collect(
    client: OrchClient,
    pool_id: str,
    replica: str,
    prompt: str,
    seed: int,
    max_tokens: int,
    model: str,
    gate: asyncio.Semaphore,
) -> list[str]:
    async with gate:
        admitted = await client.submit({
            "model": model, "prompt": prompt, "max_tokens": max_tokens, "seed": seed,
            "determinism": "strict",
            "placement": {"mode": "pin", "pool_id": pool_id, "replica_id": replica},
        })  # fmt: skip
        tokens: list[str] = []
        async for event in client.stream(admitted.task_id):
            if event.event == "token":
                tokens.append(_token(event.data))
            elif event.event == "error":
                raise RuntimeError(f"{event.data['code']}: {event.data['message']}")
            elif event.event == "started" and event.data["replica_id"] != replica:
                raise RuntimeError(f"pinned to {replica}, ran on {event.data['replica_id']}")
        return tokens


async def run_suite(
    client: OrchClient,
    pool_id: str,
    *,
    seeds: int = 64,
    max_tokens: int = 16,
    compare: dict[str, Any] | None = None,
    concurrency: int = 8,
) -> Proof:
    pool = await client.pool(pool_id)
    replicas = [r for r in pool.replicas if r.state == "ready" and r.deterministic]
    if len(replicas) < 2:
        raise RuntimeError(
            f"pool {pool_id!r} needs at least two Ready deterministic replicas "
            f"(has {len(replicas)}); set `determinism: strict` and count >= 2"
        )
    first = replicas[0]
    proof = Proof(
        pool_id,
        pool.engine,
        first.engine_version,
        first.model_digest,
        [r.replica_id for r in replicas],
        max_tokens,
    )
    if compare is not None:
        for key in ("engine_version", "model_digest", "corpus_hash", "max_tokens"):
            ours = proof.to_json()[key]
            if compare.get(key) != ours:
                raise RuntimeError(
                    f"cannot compare: {key} differs ({compare.get(key)!r} vs {ours!r})"
                )
    earlier = {(c["case"], c["seed"]): c for c in (compare or {}).get("cases", [])}
    gate = asyncio.Semaphore(concurrency)
    jobs = {
        (case, seed, r.replica_id): asyncio.create_task(
            _collect(client, pool_id, r.replica_id, prompt, seed, max_tokens, pool.model, gate)
        )
        for case, prompt in CORPUS
        for seed in range(seeds)
        for r in replicas
    }
    try:
        await asyncio.gather(*jobs.values())
    finally:
        for job in jobs.values():
            job.cancel()
    for case, _prompt in CORPUS:
        for seed in range(seeds):
            streams = {r.replica_id: jobs[(case, seed, r.replica_id)].result() for r in replicas}
            reference = streams[first.replica_id]
            digest = stream_hash(reference)
            proof.cases.append(
                {"case": case, "seed": seed, "tokens": len(reference), "hash": digest}
            )
            for rid, tokens in streams.items():
                if rid == first.replica_id:
                    continue
                found = None
                if tokens != reference:
                    i = _first_difference(reference, tokens)
                    found = Divergence(
                        case, seed, i, reference[i] if i < len(reference) else None,
                        tokens[i] if i < len(tokens) else None, f"{first.replica_id} vs {rid}",
                    )  # fmt: skip
                proof.comparisons.append(Comparison(case, seed, rid, found))
                proof.divergence = proof.divergence or found
            before = earlier.get((case, seed))
            if before is not None:
                found = None
                if before["hash"] != digest:
                    found = Divergence(
                        case, seed, -1, before["hash"][:12], digest[:12],
                        "against the earlier proof",
                    )  # fmt: skip
                proof.comparisons.append(Comparison(case, seed, EARLIER, found))
                proof.divergence = proof.divergence or found
    if proof.divergence is None and not any(c["tokens"] for c in proof.cases):
        # (one empty case is a model that ended at once; all of them compared nothing)
        proof.divergence = Divergence("*", 0, 0, None, None, "every stream was empty")
    return proof


def junit_xml(proof: Proof) -> str:
    """The proof as JUnit XML: a suite per pool, a test case per comparison."""
    failures = sum(c.divergence is not None for c in proof.comparisons)
    empty = not any(c["tokens"] for c in proof.cases)
    counts = {"tests": str(len(proof.comparisons) + 1), "failures": str(failures + empty),
              "errors": "0"}  # fmt: skip
    root = ET.Element("testsuites", {"name": "orchestratord determinism", **counts})
    suite = ET.SubElement(root, "testsuite", {
        "name": f"determinism.{proof.pool_id}", "skipped": "0", "time": "0", **counts
    })  # fmt: skip
    properties = ET.SubElement(suite, "properties")
    facts = proof.to_json()
    for key in ("engine", "engine_version", "model_digest", "corpus_hash", "max_tokens"):
        ET.SubElement(properties, "property", name=key, value=str(facts[key]))
    ET.SubElement(properties, "property", name="replicas", value=",".join(proof.replicas))
    classname = f"determinism.{proof.pool_id}"
    reference = proof.replicas[0]
    for c in proof.comparisons:
        against = (
            "against the earlier proof" if c.replica == EARLIER else f"{c.replica} vs {reference}"
        )
        name = f"{c.case} seed {c.seed}: {against}"
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
        if c.divergence is not None:
            message = c.divergence.describe()
            ET.SubElement(case, "failure", message=message, type="NonDeterminism").text = message
    case = ET.SubElement(suite, "testcase", classname=classname, name="streams not empty",
                         time="0")  # fmt: skip
    if empty:
        message = "every stream was empty: nothing was compared"
        ET.SubElement(case, "failure", message=message, type="EmptyStreams").text = message
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


@click.command(epilog=EXIT_CODES_HELP)
@click.option("--pool", "pool_id", required=True, help="A strict pool with >= 2 replicas.")
@click.option("--seeds", type=click.IntRange(1), default=64, show_default=True)
@click.option("--max-tokens", type=click.IntRange(1), default=16, show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the proof file (JSON) here.",
)
@click.option(
    "--compare",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Also require the same streams as this earlier proof (e.g. before a "
    "restart of the replicas).",
)
@click.option(
    "--junit",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JUnit XML report here (a test case per prompt x seed x replica pair).",
)
@click.pass_context
@run_async
async def determinism(
    ctx: click.Context,
    pool_id: str,
    seeds: int,
    max_tokens: int,
    out: Path | None,
    compare: Path | None,
    junit: Path | None,
) -> None:
    """Run the determinism suite against POOL: every prompt of the corpus x SEEDS seeds in
    strict mode on each replica, compared byte for byte. Exits 4 on any mismatch, naming
    the first diverging case and token."""
    earlier = json.loads(await asyncio.to_thread(compare.read_text)) if compare else None
    async with client_of(ctx) as client:
        try:
            proof = await run_suite(
                client, pool_id, seeds=seeds, max_tokens=max_tokens, compare=earlier
            )
        except RuntimeError as e:
            fail(EXIT_FAILED, str(e))
    if out is not None:
        await asyncio.to_thread(out.write_text, json.dumps(proof.to_json(), indent=2) + "\n")
    if junit is not None:
        await asyncio.to_thread(junit.write_text, junit_xml(proof))
    cases = len(proof.cases)
    if proof.divergence is not None:
        fail(EXIT_FAILED, f"determinism FAILED on {pool_id}: {proof.divergence.describe()}")
    click.echo(
        f"determinism ok: {cases} cases x {len(proof.replicas)} replicas identical "
        f"({proof.engine} {proof.engine_version}, {proof.model_digest[:19]})"
    )
