"""Checks of an answer that need no judge model: the constraints a prompt states, JSON and its
schema, ROUGE-L against the record's own answer, a verbatim quote of the context, stopping by
itself. Each applies to a prompt or not, and scores an answer in [0, 1]; ``cuvee data pairs``
ranks a model's answers by their sum. One registry, so another check is one class."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from cuvee.data.records import Conversation
from cuvee.eval.suites import EvalError
from cuvee.eval.tasks import parse_json_answer, rouge_l

Constraint = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class PromptCase:
    """One prompt to answer and check: the conversation up to the user's last turn, the
    record's own answer (the reference), the constraints it states (IFEval ids and
    arguments), a JSON schema the answer must follow, and ``where`` it was read."""

    prompt: Conversation
    where: str
    reference: str | None = None
    constraints: tuple[Constraint, ...] = ()
    json_schema: dict[str, Any] | None = field(default=None, hash=False, compare=False)

    @property
    def instruction(self) -> str:
        return self.prompt.turns[-1].content

    def messages(self) -> list[dict[str, str]]:
        return self.prompt.messages()


@dataclass(frozen=True)
class Answer:
    """One answer to a prompt: its text and why generation ended ("stop": the model ended its
    turn; "length": it ran out of tokens)."""

    text: str
    finish: str = "stop"
    tokens: int = 0


class Verifier(Protocol):
    name: str
    description: str
    # A score at or above this passes: what labels a KTO example desirable.
    passes_at: float

    def applies(self, case: PromptCase) -> bool: ...

    def score(self, case: PromptCase, answer: Answer) -> float: ...


VERIFIERS: dict[str, Verifier] = {}


def register(verifier: Verifier) -> Verifier:
    VERIFIERS[verifier.name] = verifier
    return verifier


def select_verifiers(names: list[str] | None) -> list[Verifier]:
    """The verifiers named (all when None), an unknown name an error naming the known ones."""
    if not names:
        return list(VERIFIERS.values())
    unknown = [n for n in names if n not in VERIFIERS]
    if unknown:
        raise EvalError(
            f"unknown check {', '.join(unknown)}", hint=f"known checks: {', '.join(VERIFIERS)}"
        )
    return [VERIFIERS[n] for n in dict.fromkeys(names)]


def constraint_holds(constraint_id: str, kwargs: dict[str, Any], answer: str, prompt: str) -> bool:
    """Whether an answer follows one constraint: cuvee's own check (what `data augment` wrote
    it with) for the ids cuvee has, IFEval's (what `cuvee eval` scores with) for the others.
    An empty answer follows nothing."""
    from cuvee.data.constraints import CONSTRAINTS, check_constraint

    if not answer.strip():
        return False
    if constraint_id in CONSTRAINTS:
        return bool(check_constraint(constraint_id, answer, kwargs))
    from cuvee.eval.instructions import build_checker

    return bool(build_checker(constraint_id, kwargs, prompt, "").check_following(answer))


@dataclass(frozen=True)
class ConstraintsVerifier:
    """The share of the prompt's stated constraints the answer follows."""

    name: ClassVar[str] = "constraints"
    description: ClassVar[str] = "the IFEval-style constraints the prompt states (share followed)"
    passes_at: ClassVar[float] = 1.0

    def applies(self, case: PromptCase) -> bool:
        return bool(case.constraints)

    def score(self, case: PromptCase, answer: Answer) -> float:
        held = [
            constraint_holds(cid, kwargs, answer.text, case.instruction)
            for cid, kwargs in case.constraints
        ]
        return sum(held) / len(held)


_ASKS_FOR_JSON = re.compile(r"\bJSON\b")
JSON_FORMAT = "detectable_format:json_format"


def schema_problem(value: Any, schema: dict[str, Any], at: str = "$") -> str | None:
    """The first way ``value`` breaks ``schema``, or None. The JSON Schema keywords a prompt's
    answer shape needs: type, properties, required, additionalProperties (false), items, enum."""
    types = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "null": type(None),
    }
    wanted = schema.get("type")
    if wanted is not None:
        names = wanted if isinstance(wanted, list) else [wanted]
        is_bool = isinstance(value, bool)
        if not any(
            isinstance(value, types.get(n, object)) and (n == "boolean" or not is_bool)
            for n in names
        ):
            return f"{at} is not of type {wanted}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{at} is not one of {schema['enum']}"
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                return f"{at} lacks {key!r}"
        if schema.get("additionalProperties") is False:
            extra = sorted(set(value) - set(properties))
            if extra:
                return f"{at} has unexpected {', '.join(map(repr, extra))}"
        for key, sub in properties.items():
            if key in value and isinstance(sub, dict):
                problem = schema_problem(value[key], sub, f"{at}.{key}")
                if problem:
                    return problem
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problem = schema_problem(item, schema["items"], f"{at}[{i}]")
            if problem:
                return problem
    return None


def _reference_shape(case: PromptCase) -> dict[str, Any] | None:
    """A schema read off the reference answer when it is a JSON object: the same keys."""
    if case.reference is None:
        return None
    try:
        value = parse_json_answer(case.reference)
    except ValueError:
        return None
    if not isinstance(value, dict) or not value:
        return None
    return {
        "type": "object",
        "properties": {key: {} for key in value},
        "required": list(value),
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class JsonVerifier:
    """Valid JSON (the whole answer, or one code fence), and of the expected shape: the
    record's ``json_schema``, else the keys of the reference answer when that is a JSON
    object. Half the score for valid JSON of the wrong shape."""

    name: ClassVar[str] = "json"
    description: ClassVar[str] = "valid JSON of the schema (or the reference's keys) when asked"
    passes_at: ClassVar[float] = 1.0

    def applies(self, case: PromptCase) -> bool:
        if case.json_schema is not None or _reference_shape(case) is not None:
            return True
        # A stated JSON constraint is scored by `constraints` already; count it once.
        stated = any(cid == JSON_FORMAT for cid, _ in case.constraints)
        return not stated and bool(_ASKS_FOR_JSON.search(case.instruction))

    def score(self, case: PromptCase, answer: Answer) -> float:
        try:
            value = parse_json_answer(answer.text)
        except ValueError:
            return 0.0
        schema = case.json_schema or _reference_shape(case)
        if schema is None:
            return 1.0
        return 1.0 if schema_problem(value, schema) is None else 0.5


@dataclass(frozen=True)
class RougeVerifier:
    """ROUGE-L F1 against the record's own answer."""

    name: ClassVar[str] = "rouge_l"
    description: ClassVar[str] = "ROUGE-L F1 against the record's own answer"
    # Close to the reference: a summary scoring this against a human one is a good summary.
    passes_at: ClassVar[float] = 0.4

    def applies(self, case: PromptCase) -> bool:
        return case.reference is not None and bool(case.reference.strip())

    def score(self, case: PromptCase, answer: Answer) -> float:
        return rouge_l(answer.text, case.reference or "")


_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')
# A quote this short could match by chance ("the order"): not evidence of reading the context.
MIN_QUOTE_WORDS = 4


def _squeeze(text: str) -> str:
    return " ".join(text.split()).lower()


def _quotes(text: str) -> list[str]:
    spans = [(a or b).strip().rstrip(".,;:!?").strip() for a, b in _QUOTED.findall(text)]
    return [s for s in spans if len(s.split()) >= MIN_QUOTE_WORDS]


def _is_json(text: str) -> bool:
    try:
        parse_json_answer(text)
    except ValueError:
        return False
    return True


def _shown(case: PromptCase) -> str:
    """What a quote must come from: the context passages, or, for records that fold them into
    the user's turn (OpenAI messages), what the user wrote."""
    passages = case.prompt.context or [t.content for t in case.prompt.turns if t.role == "user"]
    return _squeeze("\n".join(passages))


@dataclass(frozen=True)
class QuoteVerifier:
    """For prompts whose reference answer quotes the context: the answer quotes the context
    verbatim too (in double quotes, four words or more) and quotes nothing that is not there."""

    name: ClassVar[str] = "quote"
    description: ClassVar[str] = "quotes the context verbatim, when the reference answer does"
    passes_at: ClassVar[float] = 1.0

    def applies(self, case: PromptCase) -> bool:
        # A JSON answer's strings are quoted too; its shape is the json check's to judge.
        if case.reference is None or _is_json(case.reference):
            return False
        shown = _shown(case)
        return any(_squeeze(q) in shown for q in _quotes(case.reference))

    def score(self, case: PromptCase, answer: Answer) -> float:
        shown = _shown(case)
        quotes = _quotes(answer.text)
        if not quotes:
            return 0.0
        return 1.0 if all(_squeeze(q) in shown for q in quotes) else 0.0


@dataclass(frozen=True)
class StopsVerifier:
    """The model ended its answer itself rather than running out of tokens."""

    name: ClassVar[str] = "stops"
    description: ClassVar[str] = "the answer ends by itself (finish reason stop, not length)"
    passes_at: ClassVar[float] = 1.0

    def applies(self, case: PromptCase) -> bool:
        return True

    def score(self, case: PromptCase, answer: Answer) -> float:
        return 1.0 if answer.finish == "stop" else 0.0


for _verifier in (
    ConstraintsVerifier(),
    JsonVerifier(),
    RougeVerifier(),
    QuoteVerifier(),
    StopsVerifier(),
):
    register(_verifier)


def check_answer(case: PromptCase, answer: Answer, verifiers: list[Verifier]) -> dict[str, float]:
    """The score of each verifier that applies to the prompt (the others are left out)."""
    return {v.name: round(v.score(case, answer), 4) for v in verifiers if v.applies(case)}


def passes(scores: dict[str, float], verifiers: list[Verifier]) -> dict[str, bool]:
    """Whether each scored check passed."""
    at = {v.name: v.passes_at for v in verifiers}
    return {name: score >= at[name] for name, score in scores.items()}
