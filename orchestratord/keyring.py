"""API keys: a key file (`server.keys_file`) of hashed keys, each naming a principal.

A key is `orch-<id>-<secret>`: the id finds the entry, the SHA-256 of the whole key is
compared in constant time (`hmac.compare_digest`, also against a stand-in for unknown ids, so
a wrong id costs what a wrong secret costs). The file holds only hashes; keys are shown once,
when made (`orchestratord keys create`, or `POST /v1/keys` by an admin). The daemon reads
the file at start and on SIGHUP, and rewrites it (atomically) when keys are created or
revoked through the API.

    keys:
      - id: 3f9c0a12d4
        sha256: 9b1e...
        tenant: acme
        roles: [submit]
        limits: {max_concurrent: 8, tokens_per_minute: 200000}
        created: 1795000000
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from orchestratord.api_models import KeyCreate, KeyInfo, KeyLimits, KeyRole
from orchestratord.principals import Principal

_PREFIX = "orch"
#: What an unknown key id is compared against, so its refusal costs the same.
_STAND_IN = hashlib.sha256(b"no such key").hexdigest()


class KeyFileError(Exception):
    """A key file that cannot be used (one line, naming the file and the problem)."""


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=r"^[0-9a-f]{10}$")]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    tenant: Annotated[str, Field(min_length=1, max_length=64)]
    roles: Annotated[list[KeyRole], Field(min_length=1)]
    limits: KeyLimits = Field(default_factory=KeyLimits)
    created: int = 0

    def info(self) -> KeyInfo:
        return KeyInfo(
            id=self.id, tenant=self.tenant, roles=self.roles, limits=self.limits,
            created=self.created,
        )  # fmt: skip

    def principal(self) -> Principal:
        return Principal(self.tenant, frozenset(self.roles), self.id, self.limits)


class _KeyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = []


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def new_key() -> tuple[str, str]:
    """(id, key) for a fresh key."""
    key_id = secrets.token_hex(5)
    return key_id, f"{_PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"


def read_entries(path: Path) -> list[KeyEntry]:
    """The entries of a key file (a missing file has none); KeyFileError otherwise."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read: {e.strerror}") from None
    try:
        entries = _KeyFile.model_validate(yaml.safe_load(text) or {}).keys
    except yaml.YAMLError as e:
        raise KeyFileError(f"{path}: not valid YAML: {e}") from None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise KeyFileError(f"{path}: {where}: {err['msg']}") from None
    if len({e.id for e in entries}) != len(entries):
        raise KeyFileError(f"{path}: two keys share an id")
    return entries


def write_entries(path: Path, entries: list[KeyEntry]) -> None:
    """Replace the key file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"keys": [e.model_dump(mode="json", exclude_defaults=True) for e in entries]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(data, out, sort_keys=False)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_entry(spec: KeyCreate) -> tuple[KeyEntry, str]:
    """A new entry for `spec`, and its key (to be shown once)."""
    key_id, key = new_key()
    entry = KeyEntry(
        id=key_id, sha256=digest(key), tenant=spec.tenant, roles=sorted(set(spec.roles)),
        limits=spec.limits, created=int(time.time()),
    )  # fmt: skip
    return entry, key


class KeyRing:
    """The keys the daemon accepts: its key file's, and at most one from the environment
    (`server.api_key_env`: a single admin key for simple setups)."""

    def __init__(self, path: Path | None = None, env_key: str | None = None) -> None:
        self.path = path
        self._env = (
            None
            if env_key is None
            else KeyEntry(id="0" * 10, sha256=digest(env_key), tenant="default",
                          roles=[KeyRole.ADMIN])
        )  # fmt: skip
        self._env_principal = self._env.principal() if self._env is not None else None
        self._entries: dict[str, KeyEntry] = {}
        #: Each entry's principal, made once per (re)load, not per request.
        self._principals: dict[str, Principal] = {}
        self.reload()

    @property
    def enabled(self) -> bool:
        """Whether requests must present a key."""
        return self.path is not None or self._env is not None

    def reload(self) -> int:
        """Read the key file again (SIGHUP); the keys now accepted. KeyFileError leaves
        the keys as they were."""
        if self.path is not None:
            self._entries = {e.id: e for e in read_entries(self.path)}
            self._principals = {key_id: e.principal() for key_id, e in self._entries.items()}
        return len(self._entries)

    def authenticate(self, presented: str) -> Principal | None:
        """The principal `presented` names, or None. Constant-time in the secret."""
        given = digest(presented)
        if self._env is not None and hmac.compare_digest(given, self._env.sha256):
            return self._env_principal
        prefix, _, rest = presented.partition("-")
        key_id = rest.partition("-")[0] if prefix == _PREFIX else ""
        entry = self._entries.get(key_id)
        expected = entry.sha256 if entry is not None else _STAND_IN
        if hmac.compare_digest(given, expected) and entry is not None:
            return self._principals[key_id]
        return None

    def listing(self) -> list[KeyInfo]:
        return [e.info() for e in sorted(self._entries.values(), key=lambda e: e.created)]

    def create(self, spec: KeyCreate) -> tuple[KeyInfo, str]:
        """Add a key to the key file; (its info, the key)."""
        path = self.writable()
        entry, key = make_entry(spec)
        entries = read_entries(path)  # what is on disk now, edits by hand included
        write_entries(path, [*entries, entry])
        self.reload()
        return entry.info(), key

    def revoke(self, key_id: str) -> bool:
        """Remove a key from the key file; False if it has none by that id."""
        path = self.writable()
        entries = read_entries(path)
        kept = [e for e in entries if e.id != key_id]
        if len(kept) == len(entries):
            return False
        write_entries(path, kept)
        self.reload()
        return True

    def writable(self) -> Path:
        """The key file; KeyFileError if keys are not managed in one."""
        if self.path is None:
            raise KeyFileError("keys are managed in a key file: set server.keys_file")
        return self.path
