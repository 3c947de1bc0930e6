# shared session fixtures: two real Triton servers (the tiny model is tests/conftest.py's)
from tests.conformance.conftest import triton_server, triton_server_b  # noqa: F401
