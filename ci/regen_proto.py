"""Generate pool_managerd/proto/ from contracts/proto/ with grpcio-tools (`make regen`).

    python ci/regen_proto.py           # write
    python ci/regen_proto.py --check   # exit 1 naming each stale file

Imports in the generated code are rooted at the package (`from pool_managerd.proto import
...`): protoc sees the contract under the virtual path `pool_managerd/proto/`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts" / "proto"
PACKAGE = "pool_managerd/proto"


def generate(out: Path) -> dict[str, str]:
    """File name -> content of the generated code for every contract."""
    protos = sorted(p.name for p in CONTRACTS.glob("*.proto"))
    args = [
        "protoc",
        f"-I{PACKAGE}={CONTRACTS}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--pyi_out={out}",
        *(f"{CONTRACTS}/{name}" for name in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return {p.name: p.read_text() for p in sorted((out / PACKAGE).iterdir())}


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    target = ROOT / PACKAGE
    if "--check" in argv:
        stale = [n for n, text in fresh.items() if not (target / n).exists()
                 or (target / n).read_text() != text]  # fmt: skip
        for name in stale:
            print(f"stale: {PACKAGE}/{name} (run `make regen`)")
        return 1 if stale else 0
    for name, text in fresh.items():
        (target / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
