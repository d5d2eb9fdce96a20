"""The data side of a preference run: preference files to tokenized units, rows and batches.

A *unit* is one example as ``[prompt | first answer | second answer]`` (answers.py says how the
model reads it): for DPO and ORPO the chosen and the rejected answer; for KTO the example's
completion and, second, the completion of another example after this prompt, whose
log-probability ratio is KTO's estimate of the reference point (its KL term). KTO given pairs
takes each pair as two examples, the chosen desirable and the rejected not, as the KTO paper
does. Answers are rendered by the model's chat template up to and including its end-of-turn
marker, and tokenized apart from the prompt: the tokens the model would write after it.
Records labelled ``split: heldout`` are never trained on."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from cuvee.chat_template import ChatTemplate, get_template
from cuvee.errors import ConfigError, DataError
from cuvee.store import ModelStore
from cuvee.tokenizer import load_tokenizer, special_tokens
from cuvee.train.answers import FIRST, PROMPT, SECOND
from cuvee.train.data import Prepared, refuse_problems, split_records
from cuvee.train.lineage import DataSource
from cuvee.train.packing import assign_bins
from cuvee.train.recipe import Recipe

PAIRED = frozenset({"dpo", "orpo"})  # the methods that need chosen/rejected pairs


@dataclass(frozen=True)
class Example:
    """One preference example as text: a pair, or (KTO) a completion with its label."""

    messages: tuple[tuple[str, str], ...]  # the prompt's chat messages (role, content)
    first: str  # chosen, or the completion
    second: str | None  # rejected; None for a KTO completion
    label: bool | None  # KTO: desirable or not; None for a pair
    origin: str
    split: str | None = None


@dataclass(frozen=True)
class Unit:
    """One example as tokens. ``reference`` is the parent model's summed log-probability of
    each answer, once computed (reference.py)."""

    prompt: tuple[int, ...]
    first: tuple[int, ...]
    second: tuple[int, ...]
    label: bool | None
    truncated: bool = False
    reference: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.prompt) + len(self.first) + len(self.second)


@dataclass(frozen=True)
class UnitRow:
    """Units side by side in one row (several when packed); attention never crosses them."""

    units: tuple[Unit, ...]

    @property
    def real_tokens(self) -> int:
        return sum(len(u) for u in self.units)

    @property
    def supervised(self) -> int:
        """Answer tokens, whose log-probabilities are computed."""
        return sum(len(u.first) + len(u.second) for u in self.units)

    @property
    def examples(self) -> int:
        return len(self.units)


@dataclass
class UnitStats:
    records: int = 0
    kept: int = 0
    truncated: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    pairs: int = 0
    desirable: int = 0
    undesirable: int = 0


# -- reading ----------------------------------------------------------------------------------


def _example(record: Any, origin: str) -> Example:
    messages = tuple((m["role"], m["content"]) for m in record.prompt.messages())
    split = record.prompt.split  # a record's split rides on its prompt, as on instruction data
    if record.is_pair:
        return Example(messages, record.chosen, record.rejected, None, origin, split)
    return Example(messages, record.completion, None, bool(record.label), origin, split)


def _source(path: Path, declaration: Any, records: int) -> DataSource:
    """The file's lineage, with the licence declared for it (its sidecar file), as for
    instruction data."""
    return DataSource(
        path=str(path),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        records=records,
        licence=declaration.licence,
        authors=declaration.authors,
        declared_by=declaration.declared_by,
    )


def load_preferences(specs: list[str]) -> tuple[list[Example], list[DataSource]]:
    """Every example of every preference file, or a DataError naming the first bad records."""
    from cuvee.data.preference import read_preferences

    if not specs:
        raise DataError(
            "no preference data given", hint="pass --data FILE (pairs, or KTO's labelled answers)"
        )
    examples: list[Example] = []
    sources: list[DataSource] = []
    for spec in specs:
        path = Path(spec)
        if not path.is_file():
            raise DataError(f"{spec}: no such data file")
        result = read_preferences(path)
        refuse_problems(spec, result.problems)
        if not result.records:
            raise DataError(f"{spec}: no preference records")
        examples += [_example(r, str(getattr(r, "origin", spec))) for r in result.records]
        sources.append(_source(path, result.declaration, len(result.records)))
    return examples, sources


def for_method(examples: list[Example], method: str) -> list[Example]:
    """The examples as ``method`` trains on them: pairs for DPO and ORPO; for KTO, completions
    (a pair giving a desirable and an undesirable one)."""
    if method in PAIRED:
        unpaired = [e for e in examples if e.second is None]
        if unpaired:
            raise DataError(
                f"{unpaired[0].origin}: {method} needs chosen/rejected pairs; "
                f"{len(unpaired)} record(s) are single answers labelled desirable or not",
                hint="train those with --method kto",
            )
        return examples
    out: list[Example] = []
    for e in examples:
        if e.second is None:
            out.append(e)
        else:
            out.append(replace(e, second=None, label=True))
            out.append(replace(e, first=e.second, second=None, label=False))
    return out


# -- tokens -----------------------------------------------------------------------------------


@dataclass
class UnitEncoder:
    """Renders prompts and answers with the model's chat template and tokenizes them apart."""

    tokenizer: Any
    template: ChatTemplate
    bos: str = ""
    _answers: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def _messages(self, example: Example) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in example.messages]

    def prompt(self, example: Example) -> tuple[int, ...]:
        text = self.template.render(
            self._messages(example), add_generation_prompt=True, bos_token=self.bos
        )
        return tuple(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def shortened(self, prompt: tuple[int, ...], limit: int) -> tuple[int, ...]:
        """The prompt's last ``limit`` tokens (its BOS kept first): the question and the turn
        markers the answer follows are at the end of a long prompt."""
        if len(prompt) <= limit:
            return prompt
        bos_id = self.tokenizer.token_to_id(self.bos) if self.bos else None
        head = prompt[:1] if bos_id is not None and prompt[0] == bos_id else ()
        return head + prompt[len(prompt) - (limit - len(head)) :]

    def answer(self, example: Example, answer: str) -> tuple[int, ...]:
        """The answer's tokens through the template's end-of-turn marker (the same after any
        prompt in the families cuvee knows; checked for this one)."""
        if answer in self._answers:
            return self._answers[answer]
        messages = self._messages(example)
        before = self.template.render(messages, add_generation_prompt=True, bos_token=self.bos)
        full = self.template.render(
            [*messages, {"role": "assistant", "content": answer}], bos_token=self.bos
        )
        if not full.startswith(before):
            raise DataError(
                f"{example.origin}: the {self.template.family!r} template does not render the "
                "answer after its prompt; cannot find the answer's tokens"
            )
        turn = full[len(before) :]
        end = turn.rfind(self.template.end_of_turn)
        if end < 0:
            raise DataError(f"{example.origin}: the rendered answer has no end-of-turn")
        text = turn[: end + len(self.template.end_of_turn)]
        ids = tuple(self.tokenizer.encode(text, add_special_tokens=False).ids)
        self._answers[answer] = ids
        return ids


def _mates(examples: list[Example], seed: int) -> dict[int, int]:
    """For each example, another whose completion follows its prompt in KTO's KL estimate:
    the next in a seeded order whose prompt differs (a pair split in two gives two examples of
    one prompt; the estimate wants an unrelated answer)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = len(order)
    mates = {}
    for k, i in enumerate(order):
        step = 1
        while (
            step < min(n, 16) and examples[order[(k + step) % n]].messages == examples[i].messages
        ):
            step += 1
        mates[i] = order[(k + step) % n]
    return mates


def encode_units(
    encoder: UnitEncoder, examples: list[Example], seq_len: int, seed: int
) -> tuple[list[Unit], UnitStats]:
    """Units of at most ``seq_len`` tokens of prompt and answer each. Where they do not fit, a
    prompt longer than half of it keeps its end (``UnitEncoder.shortened``), then the answers
    are cut. A KTO completion is paired with the completion of the next example in a seeded
    order, for the KL estimate."""
    stats = UnitStats(records=len(examples))
    other = _mates(examples, seed)
    units: list[Unit] = []
    for i, example in enumerate(examples):
        prompt = encoder.prompt(example)
        first = encoder.answer(example, example.first)
        if example.second is not None:
            second = encoder.answer(example, example.second)
        else:
            second = encoder.answer(example, examples[other[i]].first)
        whole = len(prompt)
        if whole + max(len(first), len(second)) > seq_len:
            prompt = encoder.shortened(prompt, seq_len // 2)
        room = seq_len - len(prompt)  # at least half of it, or the longest answer
        truncated = len(prompt) < whole or len(first) > room or len(second) > room
        unit = Unit(prompt, first[:room], second[:room], example.label, truncated)
        units.append(unit)
        stats.kept += 1
        stats.truncated += truncated
        stats.tokens += len(unit)
        stats.supervised_tokens += len(unit.first) + len(unit.second)
        if example.label is None:
            stats.pairs += 1
        elif example.label:
            stats.desirable += 1
        else:
            stats.undesirable += 1
    return units, stats


def pack_units(units: list[Unit], capacity: int, *, packing: bool, seed: int) -> list[UnitRow]:
    """Rows of units, several per row of ``capacity`` tokens when packing, else one each."""
    if packing:
        bins = assign_bins([len(u) for u in units], capacity)
    else:
        bins = [[i] for i in range(len(units))]
    rng = random.Random(seed)
    rows = []
    for members in bins:
        rng.shuffle(members)
        rows.append(UnitRow(tuple(units[i] for i in members)))
    return rows


def answer_batch(rows: list[UnitRow], device: torch.device) -> dict[str, Any]:
    """The tensors of a micro-batch: what AnswerLogProbs takes (answers.py), the KTO labels,
    and the reference log-probabilities where the units have them. Answer slot ``2e`` is unit
    e's first answer, ``2e + 1`` its second."""
    width = max(r.real_tokens for r in rows)
    ids, positions, unit_of, branch_of = [], [], [], []
    source, targets, slot = [], [], []
    labels, reference = [], []
    e = 0
    for b, row in enumerate(rows):
        r_ids, r_pos, r_unit, r_branch = [], [], [], []
        for unit in row.units:
            offset = b * width + len(r_ids)
            p, c = len(unit.prompt), len(unit.first)
            r_ids += [*unit.prompt, *unit.first, *unit.second]
            r_pos += [*range(p + c), *range(p, p + len(unit.second))]
            r_unit += [e] * len(unit)
            r_branch += [PROMPT] * p + [FIRST] * c + [SECOND] * len(unit.second)
            # the hidden state before each answer token predicts it: the prompt's last one for
            # each answer's first token
            for start, answer, k in ((p, unit.first, 0), (p + c, unit.second, 1)):
                for j, token in enumerate(answer):
                    source.append(offset + (p - 1 if j == 0 else start + j - 1))
                    targets.append(token)
                    slot.append(2 * e + k)
            labels.append(bool(unit.label))
            reference += list(unit.reference) if unit.reference is not None else [0.0, 0.0]
            e += 1
        pad = width - len(r_ids)
        ids.append(r_ids + [0] * pad)
        positions.append(r_pos + list(range(pad)))
        unit_of.append(r_unit + [-1] * pad)
        branch_of.append(r_branch + [PROMPT] * pad)

    def tensor(values, dtype=torch.long):
        return torch.tensor(values, dtype=dtype, device=device)

    return {
        "input_ids": tensor(ids),
        "position_ids": tensor(positions),
        "unit": tensor(unit_of),
        "branch": tensor(branch_of),
        "source": tensor(source),
        "targets": tensor(targets),
        "slot": tensor(slot),
        "labels": tensor(labels, torch.bool),
        "reference": tensor(reference, torch.float32),
    }


# -- the run's data ---------------------------------------------------------------------------


def prepare_preferences(store: ModelStore, recipe: Recipe) -> Prepared:
    """Everything a preference run decides before its first step (rows without reference
    log-probabilities yet: reference.py adds them)."""
    base = store.get(recipe.base)
    template = get_template(base.manifest.chat_template)
    examples, sources = load_preferences(recipe.data)
    examples = for_method(examples, recipe.method)
    split = split_records(examples, recipe.eval_split, recipe.seed, recipe.max_eval_records)
    if not split.train:
        raise ConfigError("no training examples left after holding out the evaluation set")
    tokenizer = load_tokenizer(base.path)
    bos, _eos = special_tokens(base.path)
    encoder = UnitEncoder(tokenizer, template, bos)
    train_units, stats = encode_units(encoder, split.train, recipe.seq_len, recipe.seed)
    eval_units, _ = encode_units(encoder, split.eval, recipe.seq_len, recipe.seed)
    if not train_units:
        raise ConfigError(
            "every training example's prompt is longer than seq_len",
            hint="raise --seq-len",
        )
    capacity = 2 * recipe.seq_len  # a unit holds a prompt and two answers of up to seq_len
    pack = dict(packing=recipe.packing, seed=recipe.seed)
    return Prepared(
        recipe=recipe,
        base=base,
        sources=sources,
        train_rows=pack_units(train_units, capacity, **pack),
        eval_rows=pack_units(eval_units, capacity, **pack),
        split_how=split.how,
        encode_stats=stats.__dict__,
        train_records=len(split.train),
        eval_records=len(split.eval),
        template=template.family,
        turn_token_ids=sorted(
            {i for t in template.turn_tokens if (i := tokenizer.token_to_id(t)) is not None}
        ),
    )
