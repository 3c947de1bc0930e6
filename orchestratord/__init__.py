"""orchestratord: the queue-centric inference orchestrator daemon."""

import pool_managerd  # noqa: F401 - first: it sets gRPC's fork mode before grpc is imported
