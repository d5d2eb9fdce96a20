"""`pairwise`: two models answer the same open prompts and a judge model scores both answers,
as Vicuna's evaluation did (Alpaca's "76 % of ChatGPT" is such a relative score). Judges favour
whichever answer they read first, so every pair is judged twice, once in each order, and only a
prompt judged in both orders counts. Reported: win/tie/loss rates of A (the model) against B
(the reference) and the relative score, the sum of A's scores over the sum of B's."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cuvee.eval.suites import EvalError, Item, Score, read_jsonl, require, source_of

JUDGE_SYSTEM = (
    "You are a fair and careful judge of AI assistants. You compare two answers to the same "
    "request and score each for helpfulness, relevance, accuracy and level of detail."
)
JUDGE_TEMPLATE = """[Request]
{prompt}

[Answer 1]
{first}
[End of answer 1]

[Answer 2]
{second}
[End of answer 2]

Score each answer from 1 to 10, where 10 is best. Do not let the order of the answers or their
length sway you. On the first line write only the two scores, answer 1 first, separated by a
space, for example: 7 4
Then explain your verdict in a few sentences."""
_SCORES = re.compile(r"^\s*\**\s*(\d+(?:\.\d+)?)\s*(?:,|/10)?\s*(?:,|and)?\s+(\d+(?:\.\d+)?)")


def parse_scores(reply: str) -> tuple[float, float] | None:
    """The two scores on the judge's first non-empty line, if both are in [0, 10]."""
    line = next((ln for ln in reply.splitlines() if ln.strip()), "")
    match = _SCORES.match(line)
    if not match:
        return None
    first, second = float(match.group(1)), float(match.group(2))
    if not (0 <= first <= 10 and 0 <= second <= 10):
        return None
    return first, second


def judge_items(items: list[Item], outputs_a: list[str], outputs_b: list[str]) -> list[Item]:
    """Two judge prompts per item: A's answer first, then B's first."""
    prompts = []
    for item, a, b in zip(items, outputs_a, outputs_b, strict=True):
        for order, (first, second) in (("ab", (a, b)), ("ba", (b, a))):
            text = JUDGE_TEMPLATE.format(prompt=item.prompt, first=first, second=second)
            prompts.append(
                Item(id=f"{item.id}/{order}", prompt=text, system=JUDGE_SYSTEM, where=item.where)
            )
    return prompts


class PairwiseSuite:
    name = "pairwise"
    version = "1"
    description = "answers judged in both orders by a judge model: win/tie/loss, relative score"
    max_tokens = 384
    compares = True  # scored by compare(), against the first model given
    judge_max_tokens = 256  # the scores come first; the explanation may be cut

    def accepts(self, record: dict[str, Any]) -> bool:
        return "prompt" in record and set(record) <= {"id", "prompt", "system", "category", "vote"}

    def load(self, path: Path | None) -> list[Item]:
        path = source_of(self.name, path)
        items = []
        for number, record in read_jsonl(path):
            where = f"{path}:{number}"
            prompt = require(record, "prompt", str, where)
            if not prompt.strip():
                raise EvalError(f"{where}: 'prompt' is empty")
            items.append(
                Item(
                    id=str(record.get("id", number)),
                    prompt=prompt,
                    system=record.get("system"),
                    data={"category": record.get("category"), "vote": _vote(record, where)},
                    where=where,
                )
            )
        return items

    def score(self, items: list[Item], outputs: list[str]) -> Score:
        """Alone, a model's answers have no score here: only counts."""
        empty = sum(not o.strip() for o in outputs)
        return Score(metrics={}, counts={"answers": len(outputs), "empty_answers": empty})

    def compare(
        self,
        items: list[Item],
        outputs_a: list[str],
        outputs_b: list[str],
        judge: Callable[[list[Item]], list[str]],
        names: tuple[str, str] | None = None,
    ) -> Score:
        """The judge's verdicts, A (``names[0]``) against B; where the prompts carry people's
        votes on these two models (the web UI's compare screen), their verdicts too, and how
        often the judge agreed with them."""
        replies = judge(judge_items(items, outputs_a, outputs_b))
        wins = ties = losses = judge_errors = 0
        sum_a = sum_b = 0.0
        details = []
        for k, item in enumerate(items):
            ab, ba = parse_scores(replies[2 * k]), parse_scores(replies[2 * k + 1])
            judge_errors += (ab is None) + (ba is None)
            if ab is None or ba is None:
                details.append(
                    {"id": item.id, "verdict": "unjudged", "replies": replies[2 * k :][:2]}
                )
                continue
            a, b = ab[0] + ba[1], ab[1] + ba[0]
            sum_a += a
            sum_b += b
            verdict = "win" if a > b else "loss" if a < b else "tie"
            wins += verdict == "win"
            ties += verdict == "tie"
            losses += verdict == "loss"
            details.append({"id": item.id, "verdict": verdict, "a": a / 2, "b": b / 2})
        judged = wins + ties + losses
        human = _human_verdicts(items, names)
        metrics: dict[str, Any] = {}
        if judged:  # B scored 0 everywhere: no ratio (None), never infinity
            metrics = {
                "win": wins / judged,
                "tie": ties / judged,
                "loss": losses / judged,
                "relative_score": sum_a / sum_b if sum_b else None,
            }
        counts = {
            "prompts": len(items),
            "judged": judged,
            "wins": wins,
            "ties": ties,
            "losses": losses,
            "judge_errors": judge_errors,
        }
        if human:
            said = list(human.values())
            for verdict in ("win", "tie", "loss"):
                metrics[f"human_{verdict}"] = said.count(verdict) / len(said)
            counts["human_votes"] = len(said)
            both = [d for d in details if d["id"] in human and d["verdict"] != "unjudged"]
            for d in details:
                if d["id"] in human:
                    d["human"] = human[d["id"]]
            if both:
                agree = sum(d["verdict"] == human[d["id"]] for d in both)
                metrics["judge_agrees_with_human"] = agree / len(both)
        return Score(metrics=metrics, counts=counts, items=details)


def _vote(record: dict[str, Any], where: str) -> dict[str, Any] | None:
    """A person's verdict stored with the prompt (``POST /v1/votes``), checked."""
    vote = record.get("vote")
    if vote is None:
        return None
    if not isinstance(vote, dict) or vote.get("winner") not in ("a", "b", "tie"):
        raise EvalError(f"{where}: 'vote' needs a 'winner' of a, b or tie")
    for side in ("a", "b"):
        if not isinstance(vote.get(side), str) or not vote[side]:
            raise EvalError(f"{where}: 'vote' needs the model '{side}' as a string")
    return vote


def _human_verdicts(items: list[Item], names: tuple[str, str] | None) -> dict[str, str]:
    """Item id -> "win"/"tie"/"loss" of model ``names[0]`` as people voted on these two models
    (in either order on the screen)."""
    if names is None:
        return {}
    out = {}
    for item in items:
        vote = (item.data or {}).get("vote")
        if not vote or {vote["a"], vote["b"]} != set(names):
            continue
        if vote["winner"] == "tie":
            out[item.id] = "tie"
        else:
            out[item.id] = "win" if vote[vote["winner"]] == names[0] else "loss"
    return out


SUITE = PairwiseSuite()
