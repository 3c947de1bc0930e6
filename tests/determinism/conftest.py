# shared session fixtures: the tiny model, and two real Triton servers
from tests.conformance.conftest import triton_server, triton_server_b  # noqa: F401
from tests.engines.conftest import tiny_model  # noqa: F401
