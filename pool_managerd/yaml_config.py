"""Reading a YAML config into a pydantic model, with one line per problem naming its key.

Shared by the daemon's config and an agent's node config.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

Model = TypeVar("Model", bound=BaseModel)


class Section(BaseModel):
    """A section of a YAML config: a key it does not know is an error (a misspelt limit
    must not quietly leave the default in force)."""

    model_config = ConfigDict(extra="forbid")


class ConfigError(Exception):
    """A config that cannot be used; `problems` has one line per problem, naming the key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(root)"


def parse(model: type[Model], data: object, source: str = "config") -> Model:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            [f"{source}: {_loc(err['loc'])}: {err['msg']}" for err in e.errors()]
        ) from None


def load(model: type[Model], path: str | Path) -> Model:
    """Read and validate a YAML file; raise ConfigError with every problem found."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    return parse(model, data, str(path))
