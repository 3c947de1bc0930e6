"""What operators see: Prometheus metrics changed through named hooks (`metrics`),
OpenTelemetry traces per task (`tracing`); structured JSON logs are `pool_managerd.logs`. A leaf of
the daemon: it imports no other stage."""

from orchestratord.telemetry.metrics import Metrics

__all__ = ["Metrics"]
