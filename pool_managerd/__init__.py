"""Engine processes and their replicas: spawned and supervised here, or on other hosts by
this package running as an agent (`pool-managerd serve`).

This package spawns engines (fork, then exec) in processes where gRPC threads run (the
agent's stream, the daemon's agent service, Triton's client). gRPC's fork handlers exist
for children that go on using gRPC; ours exec at once, and with the handlers on, a child
could crash between fork and exec ("Other threads are currently calling into gRPC,
skipping fork() handlers", then SIGSEGV). So they are off, before anything imports grpc.
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
