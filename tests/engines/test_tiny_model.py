import hashlib

from pool_managerd.tiny_gguf import TinyModelSpec, write_tiny_model


def test_same_seed_writes_byte_identical_model(tmp_path):
    """OC-POOL-4001"""
    a = write_tiny_model(tmp_path / "a.gguf")
    b = write_tiny_model(tmp_path / "b.gguf")
    c = write_tiny_model(tmp_path / "c.gguf", TinyModelSpec(seed=1))
    digest = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, c)]
    assert digest[0] == digest[1] != digest[2]
    assert 100_000 < a.stat().st_size < 1_000_000
    assert not list(tmp_path.glob("*.part"))


def test_orchestratord_models_make_tiny(tmp_path):
    """OC-CLI-5004"""
    from click.testing import CliRunner

    from orchestratord.cli import main

    result = CliRunner().invoke(main, ["models", "make-tiny", str(tmp_path / "m.gguf")])
    assert result.exit_code == 0 and "seed 0" in result.output
    same = write_tiny_model(tmp_path / "ref.gguf")
    assert (tmp_path / "m.gguf").read_bytes() == same.read_bytes()
