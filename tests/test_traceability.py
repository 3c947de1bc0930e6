import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_must_has_a_test_and_every_mapping_exists():
    """OC-TEST-8002"""
    result = subprocess.run(
        [sys.executable, str(ROOT / "ci" / "check_traceability.py")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
