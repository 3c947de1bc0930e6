"""The client wing: the Python SDK (`OrchClient`), `orchctl`, and the determinism suite.

It imports the API models (`orchestratord.api_models`) and nothing else of the server, so
it can ship on its own. Public surface:

    from orchestratord.client import OrchClient, Backpressure, ClientError
"""

from orchestratord.client.sdk import (
    DEFAULT_URL,
    Backpressure,
    ClientError,
    DaemonUnreachable,
    Event,
    OrchClient,
)

__all__ = ["DEFAULT_URL", "Backpressure", "ClientError", "DaemonUnreachable", "Event", "OrchClient"]
