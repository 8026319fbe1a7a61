"""Prompt templates shared by training, evaluation and generation (one place, so they can never drift).

A template turns a conversation (list of ``{"role", "content"}`` messages ending with a user turn) into
the prompt text, and a response into the text the model must produce after it:

  ``chat``     the tokenizer's own chat template (default when the tokenizer has one)
  ``thesis``   App. Table A.1: ``<extra_id_0>System\\n{system}\\n<extra_id_1>User\\n{user}\\n<extra_id_1>Assistant\\n``
  ``jinja:<file or inline template>``  a user Jinja template rendered with ``messages`` and
               ``add_generation_prompt=True``; responses are followed by ``eos_token``.

SteerLM's ACM puts an attribute string right after the Assistant turn (thesis Table A.1, "Steer ACM"):
``render_prompt(..., attributes="helpfulness:4,humor:0")`` appends it (NeMo's ``<extra_id_2>`` convention via
``attribute_prefix``).

Tokenization: prompt and response are tokenized separately and concatenated, so the response tokens (which
carry the loss) are identical wherever the same pair is used. The response ends with the end-of-turn token
(``<|im_end|>`` for ChatML), which stays in the loss: that is how length/conciseness is learned. A response
marked ``finished=False`` (cut off by a sampling budget) gets no end-of-turn token: training on it must not
teach the model to stop there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Messages = list[dict[str, str]]

THESIS_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def as_messages(prompt: str | Sequence[dict[str, str]], system: str | None = None) -> Messages:
    """A prompt string or a conversation -> messages (with ``system`` prepended if given and absent)."""
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
    if system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system}] + messages
    return messages


@dataclass
class PromptTemplate:
    name: str = "chat"
    tokenizer: object = None
    jinja: str | None = None
    attribute_prefix: str = ""  # "<extra_id_2>" for NeMo's SteerLM label convention

    # -------------------------------------------------------------- construction
    @classmethod
    def resolve(cls, spec: str | None, tokenizer) -> PromptTemplate:
        """``None``/``"auto"`` -> chat if the tokenizer has a chat template, else thesis."""
        if spec in (None, "", "auto"):
            spec = "chat" if getattr(tokenizer, "chat_template", None) else "thesis"
        if spec == "chat":
            if not getattr(tokenizer, "chat_template", None):
                raise ValueError("template 'chat' requested but the tokenizer has no chat template")
            return cls("chat", tokenizer)
        if spec == "thesis":
            return cls("thesis", tokenizer)
        if spec.startswith("jinja:"):
            src = spec[len("jinja:"):]
            text = Path(src).read_text() if Path(src).is_file() else src
            return cls("jinja", tokenizer, jinja=text)
        raise ValueError(f"unknown template {spec!r}: use chat, thesis or jinja:<file|template>")

    @property
    def spec(self) -> str:
        return self.name if self.name != "jinja" else f"jinja:{self.jinja}"

    # -------------------------------------------------------------- rendering
    def render_prompt(self, prompt: str | Sequence[dict[str, str]], system: str | None = None,
                      attributes: str | None = None) -> str:
        """Text up to where the assistant starts writing (plus the ACM attribute string, if any)."""
        messages = as_messages(prompt, system)
        if not messages or messages[-1]["role"] != "user":
            raise ValueError("a prompt must end with a user message")
        if self.name == "chat":
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        elif self.name == "thesis":
            text = self._render_thesis(messages)
        else:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            text = env.from_string(self.jinja).render(
                messages=messages, add_generation_prompt=True,
                eos_token=getattr(self.tokenizer, "eos_token", ""),
            )
        if attributes is not None:
            text += f"{self.attribute_prefix}{attributes}\n"
        return text

    def _render_thesis(self, messages: Messages) -> str:
        system = THESIS_SYSTEM
        parts = []
        for m in messages:
            if m["role"] == "system":
                system = m["content"]
            elif m["role"] == "user":
                parts.append(f"<extra_id_1>User\n{m['content']}\n")
            else:
                parts.append(f"<extra_id_1>Assistant\n{m['content']}\n")
        return f"<extra_id_0>System\n{system}\n" + "".join(parts) + "<extra_id_1>Assistant\n"

    def response_text(self, response: str, finished: bool = True) -> str:
        """The text the model should generate for ``response``: with its end-of-turn marker if ``finished``,
        the bare text if it was cut off."""
        if not finished:
            return response
        if self.name == "chat":
            # Render a one-turn conversation with and without the answer; the difference is the response.
            probe = [{"role": "user", "content": "x"}]
            before = self.tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
            full = self.tokenizer.apply_chat_template(
                probe + [{"role": "assistant", "content": response}], tokenize=False
            )
            if not full.startswith(before):
                raise ValueError("chat template does not extend the generation prompt; use template=thesis")
            return full[len(before):].rstrip("\n")
        eos = getattr(self.tokenizer, "eos_token", None) or ""
        return response + eos

    # -------------------------------------------------------------- tokenization
    def encode(self, prompt, response: str | None = None, system: str | None = None,
               attributes: str | None = None, finished: bool = True) -> tuple[list[int], list[int]]:
        """-> (prompt_ids, response_ids). ``response=None`` gives ``[]`` for the response; ``finished=False``
        leaves out the end-of-turn token."""
        tok = self.tokenizer
        p_ids = tok(self.render_prompt(prompt, system, attributes), add_special_tokens=False)["input_ids"]
        if response is None:
            return list(p_ids), []
        r_ids = tok(self.response_text(response, finished), add_special_tokens=False)["input_ids"]
        return list(p_ids), list(r_ids)


def stop_strings(template: PromptTemplate) -> list[str]:
    """Strings that end a generated turn for this template."""
    if template.name == "thesis":
        return ["<extra_id_1>"]
    return []
