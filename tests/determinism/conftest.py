from tests.engines.conftest import tiny_model  # noqa: F401  (shared session fixture)
