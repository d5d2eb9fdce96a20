"""One template per family, rendered the same in Python as by transformers' own Jinja path."""

from __future__ import annotations

from pathlib import Path

import pytest

from cuvee.chat_template import TEMPLATES, get_template
from cuvee.errors import ConfigError

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello?"},
    {"role": "assistant", "content": "Hi. "},
    {"role": "user", "content": "Bye"},
]


def test_gemma_renders_turns_and_folds_the_system_prompt() -> None:
    text = get_template("gemma").render(CONVERSATION, add_generation_prompt=True, bos_token="<bos>")
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHello?<end_of_turn>\n"
        "<start_of_turn>model\nHi.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_chatml_renders_roles() -> None:
    text = get_template("chatml").render(CONVERSATION[1:3])
    assert text == "<|im_start|>user\nHello?<|im_end|>\n<|im_start|>assistant\nHi.<|im_end|>\n"


def test_every_assistant_turn_ends_with_the_stop_string() -> None:
    for template in TEMPLATES.values():
        text = template.render(CONVERSATION[1:3])
        assert text.endswith(template.end_of_turn + "\n")
        assert template.end_of_turn in template.stop


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_transformers_renders_the_same_text(family: str, tiny_gemma_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_gemma_dir)
    template = get_template(family)
    ours = template.render(CONVERSATION, add_generation_prompt=True, bos_token="<bos>")
    theirs = tokenizer.apply_chat_template(
        CONVERSATION, chat_template=template.jinja, tokenize=False, add_generation_prompt=True
    )
    assert theirs == ours


def test_unknown_family_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        get_template("alpaca-ish")
    assert "gemma" in info.value.hint


@pytest.mark.parametrize("family", sorted(TEMPLATES))
@pytest.mark.parametrize("turns", [1, 2, 4])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_every_template_renders_the_same_as_runtimes_render_it(
    family: str, turns: int, generation_prompt: bool
) -> None:
    """Exports embed these templates, and llama.cpp's engine, transformers and Ollama render a
    model's template with trim_blocks and lstrip_blocks on: the text must not depend on it."""
    from cuvee.chat_template import compile_template

    template = TEMPLATES[family]
    messages = CONVERSATION[-turns:] if turns < 4 else CONVERSATION
    ours = template.render(messages, add_generation_prompt=generation_prompt, bos_token="<s>")
    as_runtimes = compile_template(template.jinja, trim=True).render(
        messages=messages, add_generation_prompt=generation_prompt, bos_token="<s>"
    )
    assert ours == as_runtimes
    assert "\n\n\n" not in ours  # a stray block newline would show up as a blank run
