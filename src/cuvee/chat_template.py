"""The chat template of each model family: one Jinja source used for training, GGUF metadata
(``tokenizer.chat_template``), Modelfiles and serving, so a model formats alike everywhere.

Rendering in Python runs that same Jinja source, so there is nothing to keep in sync."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from cuvee.errors import ConfigError

# Gemma's turn format. Gemma has no system role: a system prompt is folded into the first user
# turn, as Google's own template does. Each assistant turn ends with <end_of_turn>, the stop token.
_GEMMA = (
    "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- set ns.system = (message['content'] | trim) ~ '\\n\\n' -%}"
    "{%- else -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}"
    "{%- set content = message['content'] | trim -%}"
    "{%- if message['role'] == 'user' and ns.system -%}"
    "{%- set content = ns.system ~ content -%}{%- set ns.system = '' -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' ~ role ~ '\\n' ~ content ~ '<end_of_turn>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# ChatML, used by many open families (Qwen, SmolLM, ...).
_CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' ~ message['role'] ~ '\\n' ~ (message['content'] | trim) ~ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


# The same formats as Go templates, for Ollama Modelfiles (Ollama adds BOS itself). Messages'
# content is trimmed by the Jinja templates; Ollama's clients send it trimmed already.
_GEMMA_OLLAMA = (
    '{{ $system := "" }}{{ range $i, $m := .Messages }}'
    '{{ if eq $m.Role "system" }}{{ $system = printf "%s\\n\\n" $m.Content }}'
    '{{ else if eq $m.Role "assistant" }}<start_of_turn>model\n{{ $m.Content }}<end_of_turn>\n'
    "{{ else }}<start_of_turn>user\n{{ $system }}{{ $m.Content }}<end_of_turn>\n"
    '{{ $system = "" }}{{ end }}{{ end }}<start_of_turn>model\n'
)

_CHATML_OLLAMA = (
    "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class ChatTemplate:
    """A family's template, the strings that end an assistant turn, and the token that ends it."""

    family: str
    jinja: str
    stop: tuple[str, ...]
    end_of_turn: str
    description: str
    # Tokens the template adds that a pretrained base has barely seen: LoRA training makes their
    # embedding rows trainable, or the model cannot learn to write the end-of-turn that stops it.
    turn_tokens: tuple[str, ...] = ()
    # The template in Ollama's Go template language (Modelfile TEMPLATE).
    ollama: str = ""

    def render(
        self,
        messages: list[dict[str, str]],
        *,
        add_generation_prompt: bool = False,
        bos_token: str = "",
    ) -> str:
        return compile_template(self.jinja).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token
        )


TEMPLATES: dict[str, ChatTemplate] = {}


def register(template: ChatTemplate) -> ChatTemplate:
    TEMPLATES[template.family] = template
    return template


register(
    ChatTemplate(
        family="gemma",
        jinja=_GEMMA,
        stop=("<end_of_turn>",),
        end_of_turn="<end_of_turn>",
        turn_tokens=("<start_of_turn>", "<end_of_turn>"),
        ollama=_GEMMA_OLLAMA,
        description="Gemma turns: <start_of_turn>user / model ... <end_of_turn>; system "
        "folded into "
        "the first user turn",
    )
)
register(
    ChatTemplate(
        family="chatml",
        jinja=_CHATML,
        stop=("<|im_end|>",),
        end_of_turn="<|im_end|>",
        turn_tokens=("<|im_start|>", "<|im_end|>"),
        ollama=_CHATML_OLLAMA,
        description="ChatML: <|im_start|>role ... <|im_end|>",
    )
)


def get_template(family: str) -> ChatTemplate:
    try:
        return TEMPLATES[family]
    except KeyError:
        raise ConfigError(
            f"unknown chat template family {family!r}",
            hint=f"known families: {', '.join(sorted(TEMPLATES))}",
        ) from None


@cache
def compile_template(source: str, *, trim: bool = False) -> Any:
    """The one compiler of chat templates, cached by source. Sandboxed, as transformers and
    llama.cpp render them: a model's template is data from a file. ``trim`` renders as
    transformers does a model's own template (``trim_blocks`` and ``lstrip_blocks``); cuvee's
    templates above are written without. A template's ``raise_exception(msg)`` raises
    jinja2's TemplateError, and a template that does not parse raises it too."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=trim, lstrip_blocks=trim)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)
