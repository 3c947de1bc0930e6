"""Chat templates set in a pool's config, for engines that cannot render a conversation
themselves (Triton, or any pool whose operator overrides the engine's own template).

The format is Hugging Face's: a Jinja template over `messages` (dicts with `role` and
`content`) and `add_generation_prompt`, rendered in Jinja's immutable sandbox, as
`transformers` does — a model's `chat_template` from its `tokenizer_config.json` pastes in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """A template that does not compile, or that refused a conversation."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)  # templates call raise_exception() to refuse input


class ChatTemplate:
    def __init__(self, source: str) -> None:
        self.source = source
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        try:
            self._template = env.from_string(source)
        except TemplateError as e:
            raise ChatTemplateError(f"chat_template does not compile: {e}") from None

    def render(self, messages: Iterable[dict[str, str]], **extra: Any) -> str:
        """The prompt for `messages`, ending with the assistant's turn."""
        try:
            rendered: str = self._template.render(
                messages=list(messages), add_generation_prompt=True, bos_token="",
                eos_token="", **extra,
            )  # fmt: skip
        except TemplateError as e:
            raise ChatTemplateError(f"chat_template failed: {e}") from None
        return rendered
