"""A real Triton Inference Server (from PyPI `nvidia-pytriton`) serving a decoupled
streaming model with the tensor names of Triton's LLM backends (TensorRT-LLM / vLLM
backend): inputs `text_input`, `max_tokens`, `stream`, `random_seed`, `temperature`,
`top_k`, `top_p`; output `text_output`. The "model" is a seeded, deterministic token
generator, so the adapter can be checked end to end against real Triton gRPC.

Runs in its own virtualenv (pytriton pins numpy<2):

    python -m test_harness.engines.triton_server --grpc-port P --http-port Q \
        --metrics-port R --busy-port S

Prompt directives for fault tests: `[[stall:N]]` sends nothing after N tokens for 3 s, then
ends the request; `[[error:N]]` fails the request after N tokens (an in-stream error);
`[[eos:N]]` ends after N tokens, as an end-of-sequence would.

pytriton never tells the model that a client cancelled: the generator runs on, holding a
model instance, while Triton's own metrics already count the request as done. So the model
counts its running generators itself and serves that count on `--busy-port`
(`GET /busy` → `tiny_llm_busy N`, test-only): tests that share this server wait for 0.
Prints "ready" once the model is loaded; exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

WORDS = ["alpha", "beta", "gamma", "delta", "kappa", "lambda", "sigma", "omega"]
DIRECTIVE = re.compile(r"\[\[(stall|error|eos):(\d+)\]\]")
MODEL = "tiny_llm"
STOP = threading.Event()
STALL_S = 3.0


class Busy:
    """Generators running now (they outlive cancelled requests, see above)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def __enter__(self) -> None:
        with self._lock:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.count -= 1


BUSY = Busy()


class BusyHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{MODEL}_busy {BUSY.count}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _scalar(inputs, name: str, default):
    value = inputs.data.get(name)
    if value is None:
        return default
    item = np.asarray(value).reshape(-1)[0]
    return item.decode() if isinstance(item, bytes) else item.item()


def generate(requests):
    """Decoupled: one request, many responses (one per token). Batching is off, so each
    call carries one request; every yield is the list of responses for `requests`."""
    (request,) = requests
    with BUSY:
        yield from _tokens(request)


def _tokens(request):
    prompt = _scalar(request, "text_input", "")
    max_tokens = int(_scalar(request, "max_tokens", 16))
    seed = int(_scalar(request, "random_seed", 0))
    faults = {k: int(n) for k, n in DIRECTIVE.findall(prompt)}
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    for i in range(max_tokens):
        if "eos" in faults and i >= faults["eos"]:
            return  # the model's end of sequence: fewer tokens than asked
        if "error" in faults and i >= faults["error"]:
            raise RuntimeError("injected generation failure")
        if "stall" in faults and i >= faults["stall"]:
            # bounded, then over: the model cannot learn that the client gave up
            STOP.wait(STALL_S)
            return
        word = (" " if i else "") + rng.choice(WORDS)
        yield [{"text_output": np.array([word.encode()], dtype=object)}]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--busy-port", type=int, required=True)
    ap.add_argument("--instances", type=int, default=2)
    args = ap.parse_args()
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.http_port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_address="127.0.0.1",
        metrics_port=args.metrics_port,
        # after some sessions of tests pytriton's model does not unload (Triton sees no
        # request in flight, yet the model stays live) and Triton waits out this timeout
        # on SIGTERM: 30 s by default, at the end of every such session, for each server
        exit_timeout_secs=3,
    )
    signal.signal(signal.SIGTERM, lambda *_: STOP.set())
    busy = ThreadingHTTPServer(("127.0.0.1", args.busy_port), BusyHandler)
    threading.Thread(target=busy.serve_forever, daemon=True).start()
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=[generate] * args.instances,
            inputs=[
                Tensor(name="text_input", dtype=bytes, shape=(1,)),
                Tensor(name="max_tokens", dtype=np.int32, shape=(1,), optional=True),
                Tensor(name="stream", dtype=np.bool_, shape=(1,), optional=True),
                Tensor(name="random_seed", dtype=np.uint64, shape=(1,), optional=True),
                Tensor(name="temperature", dtype=np.float32, shape=(1,), optional=True),
                Tensor(name="top_k", dtype=np.int32, shape=(1,), optional=True),
                Tensor(name="top_p", dtype=np.float32, shape=(1,), optional=True),
            ],
            outputs=[Tensor(name="text_output", dtype=bytes, shape=(1,))],
            # no batching: each request streams its own number of tokens (ENGINES.md)
            config=ModelConfig(decoupled=True, batching=False),
            strict=False,
        )
        triton.run()
        print("ready", flush=True)
        STOP.wait()
    busy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
