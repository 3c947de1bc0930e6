"""What both ends of the agent protocol (contracts/proto/pool_manager.proto) agree on."""

from __future__ import annotations

from pool_managerd.proto import pool_manager_pb2 as pb
from pool_managerd.replica import ReplicaState

#: The protocol version this code speaks (Hello.protocol_version).
PROTOCOL_VERSION = 1

#: Call metadata carrying the join token: `authorization: Bearer <token>`.
AUTH_METADATA = "authorization"

TO_WIRE: dict[ReplicaState, pb.ReplicaState] = {
    ReplicaState.STARTING: pb.REPLICA_STATE_STARTING,
    ReplicaState.READY: pb.REPLICA_STATE_READY,
    ReplicaState.UNREADY: pb.REPLICA_STATE_UNREADY,
    ReplicaState.DRAINING: pb.REPLICA_STATE_DRAINING,
    ReplicaState.STOPPED: pb.REPLICA_STATE_STOPPED,
    ReplicaState.FAILED: pb.REPLICA_STATE_FAILED,
}
FROM_WIRE = {wire: state for state, wire in TO_WIRE.items()}
