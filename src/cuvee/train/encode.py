"""Turn records into token ids and labels, the way the model will be asked at inference.

The family's chat template renders the whole conversation; the character span of each assistant
turn, up to and including the template's end-of-turn marker, is found by rendering prefixes, and
the tokens inside those spans are the supervised ones. Learning the end-of-turn marker after
every answer is what makes a fine-tuned model stop by itself."""

from __future__ import annotations

from dataclasses import dataclass

from cuvee.chat_template import ChatTemplate
from cuvee.data.records import Conversation
from cuvee.errors import DataError

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One record as tokens. ``labels[i]`` is the token the model should predict after reading
    ``input_ids[: i + 1]``, or IGNORE where nothing is learned."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def supervised(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncodeStats:
    records: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    tokens: int = 0
    supervised_tokens: int = 0


class Encoder:
    """Renders and tokenizes records for one model: its tokenizer, chat template and specials."""

    def __init__(
        self,
        tokenizer,
        template: ChatTemplate,
        *,
        bos_token: str = "",
        eos_token: str = "",
        train_on_prompt: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.bos = bos_token
        self.eos = eos_token
        self.train_on_prompt = train_on_prompt
        eot_ids = tokenizer.encode(template.end_of_turn, add_special_tokens=False).ids
        if len(eot_ids) != 1:
            raise DataError(
                f"the tokenizer does not know {template.end_of_turn!r} as one token",
                hint=f"the {template.family!r} template needs it to end assistant turns",
            )
        self.end_of_turn_id = eot_ids[0]

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        return self.template.render(
            messages, add_generation_prompt=generation_prompt, bos_token=self.bos
        )

    def spans(self, record: Conversation) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans the model learns to write."""
        if record.is_text:
            text = f"{self.bos}{record.text}{self.eos}"
            return text, [(len(self.bos), len(text))]
        messages = record.messages()
        full = self._render(messages)
        if self.train_on_prompt:
            return full, [(len(self.bos), len(full))]
        spans: list[tuple[int, int]] = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:i], generation_prompt=True)
            through = self._render(messages[: i + 1])
            if not (full.startswith(before) and full.startswith(through)):
                raise DataError(
                    f"{record.origin}: the {self.template.family!r} template does not render "
                    "conversations prefix by prefix; cannot find the assistant turns"
                )
            turn = full[len(before) : len(through)]
            end = turn.rfind(self.template.end_of_turn)
            if end < 0:
                raise DataError(f"{record.origin}: rendered assistant turn has no end-of-turn")
            spans.append((len(before), len(before) + end + len(self.template.end_of_turn)))
        return full, spans

    def encode(self, record: Conversation, max_len: int) -> Example | None:
        """The record as an Example of at most ``max_len`` tokens; None if truncation left
        nothing to learn."""
        text, spans = self.spans(record)
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        targets = [False] * len(ids)
        for j, (start, _end) in enumerate(enc.offsets):
            # A token belongs to the span it starts in.
            targets[j] = any(a <= start < b for a, b in spans)
        truncated = len(ids) > max_len
        ids, targets = ids[:max_len], targets[:max_len]
        labels = [ids[j + 1] if targets[j + 1] else IGNORE for j in range(len(ids) - 1)]
        labels.append(IGNORE)
        if all(t == IGNORE for t in labels):
            return None
        return Example(ids, labels, truncated)

    def encode_all(
        self, records: list[Conversation], max_len: int
    ) -> tuple[list[Example], EncodeStats]:
        stats = EncodeStats(records=len(records))
        out: list[Example] = []
        for record in records:
            example = self.encode(record, max_len)
            if example is None:
                stats.dropped_no_target += 1
                continue
            stats.kept += 1
            stats.truncated += example.truncated
            stats.tokens += len(example)
            stats.supervised_tokens += example.supervised
            out.append(example)
        return out, stats
