"""Write a tiny llama-architecture GGUF model with seeded random weights.

No model hub is reachable here, so the project writes its own model: llama-server loads it,
tokenizes (SPM with byte fallback over 256 byte tokens) and generates — useless as language,
real as an engine workload. Same arguments, same seed → byte-identical file.

Vocabulary: <unk>=0, <s>=1, </s>=2, then byte tokens <0x00>..<0xFF> as ids 3..258.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

BYTE_TOKEN_OFFSET = 3
EOS_ID = 2


@dataclass(frozen=True)
class TinyModelSpec:
    seed: int = 0
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_ff: int = 128
    n_ctx: int = 256
    f16: bool = False
    std: float = 0.2

    @classmethod
    def slow(cls, seed: int = 0) -> TinyModelSpec:
        """A larger model (~68 MB, ~150 tokens/s here) for cancel and timeout tests."""
        return cls(seed=seed, n_embd=512, n_layer=8, n_head=8, n_ff=2048, n_ctx=2048, f16=True)


def byte_token_id(byte: int) -> int:
    return BYTE_TOKEN_OFFSET + byte


def unprintable_logit_bias() -> list[list[int | bool]]:
    """llama.cpp `logit_bias` that bans every byte outside printable ASCII, so the random
    model writes readable (if meaningless) text in demos."""
    return [[byte_token_id(b), False] for b in range(256) if not 0x20 <= b <= 0x7E]


def _vocab() -> tuple[list[bytes], list[int]]:
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    return tokens, [int(t) for t in types]


def write_tiny_model(path: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Write the model atomically to `path` and return it."""
    if spec.n_embd % spec.n_head:
        raise ValueError("n_embd must be divisible by n_head")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, types = _vocab()
    rng = np.random.default_rng(spec.seed)
    dtype = np.float16 if spec.f16 else np.float32
    head_dim = spec.n_embd // spec.n_head

    def weight(rows: int, cols: int) -> np.ndarray:
        # numpy (out_features, in_features); gguf stores the reverse (ggml order)
        return (rng.standard_normal((rows, cols), dtype=np.float32) * spec.std).astype(dtype)

    def norm() -> np.ndarray:
        return np.ones((spec.n_embd,), dtype=np.float32)  # 1-D tensors stay f32

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(f"orchestratord-tiny-seed{spec.seed}")
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if spec.f16 else gguf.LlamaFileType.ALL_F32)
        w.add_vocab_size(len(tokens))
        w.add_context_length(spec.n_ctx)
        w.add_embedding_length(spec.n_embd)
        w.add_block_count(spec.n_layer)
        w.add_feed_forward_length(spec.n_ff)
        w.add_head_count(spec.n_head)
        w.add_head_count_kv(spec.n_head)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores([0.0] * len(tokens))
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(EOS_ID)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        names, kinds = gguf.TENSOR_NAMES, gguf.MODEL_TENSOR
        w.add_tensor(names[kinds.TOKEN_EMBD] + ".weight", weight(len(tokens), spec.n_embd))
        for i in range(spec.n_layer):

            def name(kind: gguf.MODEL_TENSOR, i: int = i) -> str:
                return names[kind].format(bid=i) + ".weight"

            w.add_tensor(name(kinds.ATTN_NORM), norm())
            w.add_tensor(name(kinds.ATTN_Q), weight(spec.n_embd, spec.n_embd))
            w.add_tensor(name(kinds.ATTN_K), weight(spec.n_head * head_dim, spec.n_embd))
            w.add_tensor(name(kinds.ATTN_V), weight(spec.n_head * head_dim, spec.n_embd))
            w.add_tensor(name(kinds.ATTN_OUT), weight(spec.n_embd, spec.n_embd))
            w.add_tensor(name(kinds.FFN_NORM), norm())
            w.add_tensor(name(kinds.FFN_GATE), weight(spec.n_ff, spec.n_embd))
            w.add_tensor(name(kinds.FFN_UP), weight(spec.n_ff, spec.n_embd))
            w.add_tensor(name(kinds.FFN_DOWN), weight(spec.n_embd, spec.n_ff))
        w.add_tensor(names[kinds.OUTPUT_NORM] + ".weight", norm())
        w.add_tensor(names[kinds.OUTPUT] + ".weight", weight(len(tokens), spec.n_embd))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def ensure_tiny_model(path: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """The model at `path`, written first if it is not there yet."""
    path = Path(path)
    return path if path.exists() else write_tiny_model(path, spec)
