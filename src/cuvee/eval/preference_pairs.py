"""`cuvee data pairs`: preference data from the team's own model and checks that need no judge.
A model answers each prompt k times (seeded samples, batched by the engine); the verifiers
(``cuvee.eval.verifiers``) score every answer; the best and the worst answer of a prompt become
a pair when their totals differ by a margin, and every answer becomes a KTO example labelled by
whether it passed its checks. Augmented records (``cuvee data augment``) give pairs without a
model: the rewritten answer over the original one, where the original fails the constraint."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cuvee.data.records import Conversation
from cuvee.data.validate import fingerprint
from cuvee.eval.suites import EvalError
from cuvee.eval.verifiers import (
    Answer,
    PromptCase,
    Verifier,
    check_answer,
    constraint_holds,
    passes,
)

if TYPE_CHECKING:
    from cuvee.eval.backends import StoreBackend
    from cuvee.progress import Reporter

# Totals must differ by half a pass/fail check: a constraint followed or not, an answer that
# stops or runs out, decides; ROUGE-L's wobble between two similar answers does not.
DEFAULT_MARGIN = 0.5
DEFAULT_SAMPLES = 4
DEFAULT_TEMPERATURE = 0.8
DEFAULT_MAX_TOKENS = 256


@dataclass
class PairsSummary:
    """What a run made and dropped, for the printed summary and ``--json``."""

    prompts: int = 0
    samples: int = 0
    tokens: int = 0  # generated, over all answers
    seconds: float = 0.0  # spent sampling
    pairs: int = 0
    ties: int = 0  # best and worst total closer than the margin
    too_few: int = 0  # fewer than two non-empty answers
    longer: int = 0  # pairs whose chosen answer was too much longer than the rejected one
    empty: int = 0  # empty answers, in no pair and no KTO record
    references: Counter[str] = field(default_factory=Counter)  # candidates / chosen / rejected
    skipped: Counter[str] = field(default_factory=Counter)  # records not used as prompts
    applied: Counter[str] = field(default_factory=Counter)  # prompts each check scored
    decided: Counter[str] = field(default_factory=Counter)  # kept pairs each check favoured
    kto: Counter[str] = field(default_factory=Counter)  # desirable / undesirable

    def to_json(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "samples": self.samples,
            "tokens": self.tokens,
            "sampling_seconds": round(self.seconds, 1),
            "pairs": self.pairs,
            "dropped": {
                "tie": self.ties,
                "too_few_answers": self.too_few,
                "longer_chosen": self.longer,
            },
            "empty_answers": self.empty,
            **({"reference_answers": dict(self.references)} if self.references else {}),
            "skipped_records": dict(self.skipped),
            "checkers": {
                name: {"prompts": self.applied[name], "decided": self.decided[name]}
                for name in self.applied
            },
            "kto": {"desirable": self.kto["desirable"], "undesirable": self.kto["undesirable"]},
        }


# ------------------------------------------------------------------------------ the prompts


def _constraints(metadata: dict[str, Any], where: str) -> tuple[tuple[str, dict], ...]:
    """The constraints a record states: ``metadata.constraint`` as `data augment` writes it,
    a list of them under ``metadata.constraints``, or IFEval's ``instruction_id_list`` and
    ``kwargs``. An id neither cuvee nor IFEval knows fails here, naming the record."""
    from cuvee.data.constraints import CONSTRAINTS
    from cuvee.ifeval_checkers import offline_checkers

    found: list[tuple[str, dict]] = []
    one = metadata.get("constraint")
    listed = [one] if one is not None else list(metadata.get("constraints") or [])
    for entry in listed:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            raise EvalError(f"{where}: a constraint in metadata must be {{id, kwargs}}")
        found.append((entry["id"], dict(entry.get("kwargs") or {})))
    ids = metadata.get("instruction_id_list") or []
    kwargs = metadata.get("kwargs") or [{}] * len(ids)
    if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
        raise EvalError(f"{where}: metadata.kwargs must hold one object per instruction id")
    for cid, kw in zip(ids, kwargs, strict=True):
        if not isinstance(cid, str) or not isinstance(kw, dict):
            raise EvalError(f"{where}: instruction ids are strings, kwargs objects")
        found.append((cid, {k: v for k, v in kw.items() if v is not None}))
    for cid, _ in found:
        if cid not in CONSTRAINTS and cid not in offline_checkers():
            raise EvalError(f"{where}: unknown constraint id {cid!r} in metadata")
    return tuple(found)


def prompt_cases(records: list[Conversation], summary: PairsSummary) -> list[PromptCase]:
    """The prompts of instruction records: each conversation without its last assistant turn,
    which is kept as the reference. Plain-text records hold no prompt and held-out records
    are for evaluation only; both are skipped and counted."""
    cases = []
    for record in records:
        where = str(record.origin)
        if record.is_text:
            summary.skipped["text"] += 1
            continue
        if record.split == "heldout":
            summary.skipped["heldout"] += 1
            continue
        has_answer = record.turns[-1].role == "assistant"
        prompt_turns = record.turns[:-1] if has_answer else record.turns
        schema = record.metadata.get("json_schema")
        if schema is not None and not isinstance(schema, dict):
            raise EvalError(f"{where}: metadata.json_schema must be an object")
        cases.append(
            PromptCase(
                prompt=Conversation(
                    turns=prompt_turns,
                    origin=record.origin,
                    format=record.format,
                    system=record.system,
                    context=record.context,
                    category=record.category,
                    split=record.split,
                ),
                where=where,
                reference=record.turns[-1].content if has_answer else None,
                constraints=_constraints(record.metadata, where),
                json_schema=schema,
            )
        )
    return cases


# ------------------------------------------------------------------------------ the answers


# The seed a record's own answer is listed under when it joins the sampled ones as a candidate.
REFERENCE = "reference"


@dataclass(frozen=True)
class ScoredAnswer:
    answer: Answer
    seed: int | str  # the sample's seed, or REFERENCE for the record's own answer
    scores: dict[str, float]

    @property
    def total(self) -> float:
        return round(sum(self.scores.values()), 4)

    @property
    def empty(self) -> bool:
        return not self.answer.text.strip()


def sample_seed(seed: int, k: int, j: int) -> int:
    """Sample j of every prompt draws with its own seed; runs with different --seed share
    none."""
    return seed * k + j


def sample_answers(
    backend: StoreBackend,
    cases: list[PromptCase],
    *,
    k: int,
    temperature: float,
    max_tokens: int,
    seed: int,
    advance: Callable[[int], None],
) -> list[list[tuple[int, Answer]]]:
    """k seeded answers to each prompt, all requests handed to the engine at once (it batches
    them), as (seed, answer) per prompt."""
    from cuvee.engine.base import Request, SamplingParams

    requests = [
        (
            case.where,
            Request(
                messages=case.messages(),
                params=SamplingParams(
                    temperature=temperature, seed=sample_seed(seed, k, j), max_tokens=max_tokens
                ),
            ),
        )
        for case in cases
        for j in range(k)
    ]
    done = backend.complete(requests, advance)
    answers = [
        (request.params.seed or 0, Answer(c.text, c.finished.reason, c.finished.completion_tokens))
        for (_, request), c in zip(requests, done, strict=True)
    ]
    return [answers[i * k : (i + 1) * k] for i in range(len(cases))]


def _row(case: PromptCase) -> dict[str, Any]:
    row: dict[str, Any] = {"messages": case.messages()}
    if case.prompt.category:
        row["category"] = case.prompt.category
    if case.prompt.split:
        row["split"] = case.prompt.split
    return row


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def choose_pair(
    answers: list[ScoredAnswer], margin: float
) -> tuple[ScoredAnswer, ScoredAnswer] | str:
    """(chosen, rejected): the best and the worst non-empty answer, the first in sampling order
    among equals; or why there is no pair ("too_few", "tie")."""
    usable = [a for a in answers if not a.empty]
    if len({" ".join(a.answer.text.split()) for a in usable}) < 2:
        return "too_few"
    best = max(usable, key=lambda a: a.total)  # max and min keep the first of equals
    worst = min(usable, key=lambda a: a.total)
    if best.total - worst.total < margin or _same(best.answer.text, worst.answer.text):
        return "tie"
    return best, worst


# A pair passes the length check when its chosen answer has at most ratio x the rejected one's
# words plus this many (short answers differ by a few words without being "longer").
LENGTH_SLACK_WORDS = 3


def length_balanced(
    rows: list[dict[str, Any]], ratio: float, summary: PairsSummary
) -> list[dict[str, Any]]:
    """The pairs whose chosen answer is not much longer than the rejected one (at most
    ``ratio`` times its words, plus a few). Where the better answer is also the longer one,
    DPO learns length as much as quality. In bench/pref_quality.py's pilot (seed 1, dev half),
    DPO on every pair wrote answers 3.8x as long as the SFT baseline's; on these only (ratio
    1.1), 1.9x, with prompt-level strict accuracy 0.477 -> 0.494."""
    kept = []
    for row in rows:
        chosen, rejected = len(row["chosen"].split()), len(row["rejected"].split())
        if chosen <= ratio * rejected + LENGTH_SLACK_WORDS:
            kept.append(row)
        else:
            summary.longer += 1
            summary.pairs -= 1
            for role, seed in row.get("metadata", {}).get("seeds", {}).items():
                if seed == REFERENCE:
                    summary.references[role] -= 1
    return kept


def deciding(chosen: dict[str, float], rejected: dict[str, float]) -> list[str]:
    """The checks that favoured the chosen answer, most first."""
    gains = {n: chosen[n] - rejected[n] for n in chosen if chosen[n] > rejected[n]}
    return sorted(gains, key=lambda n: (-gains[n], n))


def pair_record(
    case: PromptCase, chosen: ScoredAnswer, rejected: ScoredAnswer, model: str | None
) -> dict[str, Any]:
    """An ``openai-pairs`` record; its metadata says which checks decided and why."""
    metadata: dict[str, Any] = {
        "checker": deciding(chosen.scores, rejected.scores),
        "scores": {"chosen": chosen.scores, "rejected": rejected.scores},
        "margin": round(chosen.total - rejected.total, 4),
        "model": model,
        "source": case.where,
        "seeds": {"chosen": chosen.seed, "rejected": rejected.seed},
    }
    if case.constraints:
        metadata["constraints"] = [{"id": c, "kwargs": kw} for c, kw in case.constraints]
    return {
        **_row(case),
        "chosen": chosen.answer.text,
        "rejected": rejected.answer.text,
        "metadata": metadata,
    }


def kto_record(
    case: PromptCase, answer: ScoredAnswer, verifiers: list[Verifier], model: str | None
) -> dict[str, Any]:
    """A ``kto-messages`` record: the answer last, desirable when it passed every check."""
    verdicts = passes(answer.scores, verifiers)
    row = _row(case)
    row["messages"] = [*row["messages"], {"role": "assistant", "content": answer.answer.text}]
    return {
        **row,
        "label": all(verdicts.values()),
        "metadata": {
            "checker": sorted(verdicts),
            "failed": sorted(n for n, ok in verdicts.items() if not ok),
            "scores": answer.scores,
            "model": model,
            "source": case.where,
            "seed": answer.seed,
        },
    }


def build_pairs(
    cases: list[PromptCase],
    sampled: list[list[tuple[int, Answer]]],
    verifiers: list[Verifier],
    *,
    margin: float,
    model: str | None,
    summary: PairsSummary,
    with_reference: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pairs kept and the KTO records, from each prompt's sampled answers. With
    ``with_reference``, a record's own answer is one more candidate, scored by the same checks
    and listed first (so it is chosen among equals): where it beats the model's worst answer,
    the pair teaches the data's answer over the model's own (self-play fine-tuning, SPIN)."""
    pairs: list[dict[str, Any]] = []
    kto: list[dict[str, Any]] = []
    for case, answers in zip(cases, sampled, strict=True):
        scored = [ScoredAnswer(a, s, check_answer(case, a, verifiers)) for s, a in answers]
        summary.prompts += 1
        summary.samples += len(scored)
        summary.tokens += sum(a.answer.tokens for a in scored)
        summary.empty += sum(a.empty for a in scored)
        if with_reference and case.reference and case.reference.strip():
            own = Answer(case.reference)
            scored.insert(0, ScoredAnswer(own, REFERENCE, check_answer(case, own, verifiers)))
            summary.references["candidates"] += 1
        if scored:
            summary.applied.update(scored[0].scores.keys())
        # An answer repeated with the same label is one example (as `data check` counts
        # duplicates: case and spacing aside); "Not spam" and "not spam" labelled apart stay.
        seen: set[tuple[str, bool]] = set()
        for answer in scored:
            if answer.empty:
                continue
            writer = None if answer.seed == REFERENCE else model
            record = kto_record(case, answer, verifiers, writer)
            key = (fingerprint(answer.answer.text), record["label"])
            if key in seen:
                continue
            seen.add(key)
            summary.kto["desirable" if record["label"] else "undesirable"] += 1
            kto.append(record)
        choice = choose_pair(scored, margin)
        if choice == "too_few":
            summary.too_few += 1
        elif choice == "tie":
            summary.ties += 1
        else:
            chosen, rejected = choice
            for role, answer in (("chosen", chosen), ("rejected", rejected)):
                if answer.seed == REFERENCE:
                    summary.references[role] += 1
            record = pair_record(case, chosen, rejected, model)
            summary.decided.update(record["metadata"]["checker"])
            summary.pairs += 1
            pairs.append(record)
    return pairs, kto


# ------------------------------------------------------------------- pairs from augmentation


def _instruction_key(record: Conversation, instruction: str) -> tuple:
    return (record.system, record.context, record.turns[:-2], instruction.rstrip())


def _original_instruction(variant: Conversation, cid: str, kwargs: dict) -> list[str]:
    """The instructions the variant's could have been made from: its last user turn without
    one of the constraint's phrasings at the end (augment appends exactly one)."""
    from cuvee.data.constraints import get_constraint

    said = variant.turns[-2].content.rstrip()
    found = []
    for phrasing in get_constraint(cid).phrasings(kwargs):
        if said.endswith(phrasing.rstrip()):
            found.append(said[: len(said) - len(phrasing.rstrip())].rstrip())
    return found


_ORIGIN = re.compile(r"^(?P<file>.+?)(?::(?P<line>\d+)|\[(?P<index>\d+)\])$")


def _from_origin(origin: str, beside: Path) -> Conversation | None:
    """The record ``augmented_from`` points at (``file:line``), when that file can be read
    (as written, or next to the augmented file)."""
    from cuvee.data.formats import read_file
    from cuvee.errors import CuveeError

    match = _ORIGIN.match(origin)
    if match is None:
        return None
    for path in (Path(match["file"]), beside.parent / Path(match["file"]).name):
        if not path.is_file():
            continue
        try:
            records = read_file(path).records
        except CuveeError:
            return None
        for record in records:
            if (match["line"] and record.origin.line == int(match["line"])) or (
                match["index"] and record.origin.index == int(match["index"])
            ):
                return record
        return None
    return None


def augment_pairs(
    records: list[Conversation],
    data_path: Path,
    summary: PairsSummary,
    counts: Counter[str],
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pairs from `data augment` variants: the constrained instruction, the rewritten answer
    (chosen) and the original answer (rejected), kept only where the check confirms that the
    original fails the added constraint and the rewritten answer follows it. The original is
    found in the same file (augment writes the originals first) or where ``augmented_from``
    points. ``counts`` says why variants were dropped; ``limit`` caps the variants used."""
    originals: dict[tuple, Conversation] = {}
    for record in records:
        if not record.is_text and "constraint" not in record.metadata and len(record.turns) >= 2:
            originals.setdefault(_instruction_key(record, record.turns[-2].content), record)
    pairs: list[dict[str, Any]] = []
    kto: list[dict[str, Any]] = []
    for record in records:
        constraint = record.metadata.get("constraint")
        if record.is_text or not isinstance(constraint, dict) or len(record.turns) < 2:
            continue
        where = str(record.origin)
        if record.split == "heldout":
            summary.skipped["heldout"] += 1
            continue
        if limit is not None and summary.prompts >= limit:
            break
        summary.prompts += 1
        cid, kwargs = constraint["id"], dict(constraint.get("kwargs") or {})
        original = next(
            (
                originals[key]
                for text in _original_instruction(record, cid, kwargs)
                if (key := _instruction_key(record, text)) in originals
            ),
            None,
        )
        if original is None and isinstance(record.metadata.get("augmented_from"), str):
            original = _from_origin(record.metadata["augmented_from"], data_path)
        if original is None:
            counts["no_original"] += 1
            continue
        summary.samples += 2
        instruction = record.turns[-2].content
        rewritten, before = record.turns[-1].content, original.turns[-1].content
        if not constraint_holds(cid, kwargs, rewritten, instruction):
            counts["rewritten_fails"] += 1
            continue
        if constraint_holds(cid, kwargs, before, instruction) or _same(rewritten, before):
            counts["original_passes"] += 1
            summary.ties += 1
            continue
        case = PromptCase(
            prompt=Conversation(
                turns=record.turns[:-1],
                origin=record.origin,
                format=record.format,
                system=record.system,
                context=record.context,
                category=record.category,
                split=record.split,
            ),
            where=where,
            constraints=((cid, kwargs),),
        )
        chosen = ScoredAnswer(Answer(rewritten), 0, {"constraints": 1.0})
        rejected = ScoredAnswer(Answer(before), 0, {"constraints": 0.0})
        row = pair_record(case, chosen, rejected, None)
        meta = row["metadata"]
        del meta["seeds"], meta["model"]
        meta["original"] = str(original.origin)
        pairs.append(row)
        summary.pairs += 1
        summary.applied["constraints"] += 1
        summary.decided["constraints"] += 1
        for answer, label in ((rewritten, True), (before, False)):
            kto.append(
                {
                    **_row(case),
                    "messages": [*case.messages(), {"role": "assistant", "content": answer}],
                    "label": label,
                    "metadata": {
                        "checker": ["constraints"],
                        "failed": [] if label else ["constraints"],
                        "scores": {"constraints": 1.0 if label else 0.0},
                        "source": where,
                    },
                }
            )
            summary.kto["desirable" if label else "undesirable"] += 1
    return pairs, kto


# -------------------------------------------------------------------------- from a model


def model_lineage(backend: StoreBackend, identity: dict[str, Any]) -> dict[str, Any]:
    """What the data's sidecar records of the model that wrote the answers: its name, licence
    and where it comes from (its parent and base), and the hash of what ran."""
    from cuvee.store import ModelStore

    info: dict[str, Any] = {"name": backend.label}
    if identity.get("backend") == "store":
        manifest = ModelStore(backend.settings.models_dir).get(backend.label).manifest
        lineage = getattr(manifest, "lineage", None) or {}
        base = lineage.get("base") or {}
        info.update(
            licence=manifest.licence.id,
            commercial_use=manifest.licence.commercial_use,
            kind=manifest.kind,
            parent=manifest.parent,
            base=base.get("name") or (manifest.parent or backend.label),
            upstream=base.get("upstream") or manifest.source.upstream,
        )
    else:
        info.update(licence=None, commercial_use=None)
    info.update(sha256=identity.get("file_sha256"), file=identity.get("file"))
    return {k: v for k, v in info.items() if v is not None or k in ("licence",)}


def pairs_from_model(
    backend: StoreBackend,
    cases: list[PromptCase],
    verifiers: list[Verifier],
    *,
    k: int,
    temperature: float,
    max_tokens: int,
    seed: int,
    margin: float,
    summary: PairsSummary,
    reporter: Reporter,
    with_reference: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Sample, score and pair: the pairs kept and the KTO records."""
    title = f"{backend.label} · {k} answers to {len(cases)} prompts"
    started = time.monotonic()
    with reporter.items(title, len(cases) * k) as advance:
        sampled = sample_answers(
            backend,
            cases,
            k=k,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            advance=advance,
        )
    summary.seconds = time.monotonic() - started
    return build_pairs(
        cases,
        sampled,
        verifiers,
        margin=margin,
        model=backend.label,
        summary=summary,
        with_reference=with_reference,
    )
