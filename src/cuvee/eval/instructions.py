"""`instructions`: verifiable instruction following in the IFEval style. Each prompt carries
constraints a program can check (all lowercase, N bullets, an end phrase...); the checkers are
the IFEval ones from the ``if-verifiable`` package and the four metrics are IFEval's, so figures
on the official ``input_data.jsonl`` (read as is) compare with published ones.

Two things the upstream helpers would do quietly are made loud here: an unknown instruction id
or unusable arguments fail the load (naming file and line) instead of being skipped, and a
checker that raises is counted as not followed and reported in ``checker_errors``. Sentence
splitting, which the checkers take from NLTK's punkt data (a download), is routed to the
``nupunkt`` package's shipped model, so nothing is fetched and no check depends on what happens
to be installed in ``nltk_data``; that routing lives in ``cuvee.ifeval_checkers``, which the
training constraints (``cuvee.data.constraints``) use too, so both count alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cuvee.eval.suites import EvalError, Item, Score, read_jsonl, require, source_of
from cuvee.ifeval_checkers import offline_checkers


def build_checker(instruction_id: str, kwargs: dict[str, Any], prompt: str, where: str) -> Any:
    """A ready checker, built as IFEval's evaluation does (arguments, then the prompt for the
    checkers that need it). Arguments that are None are dropped (the Hugging Face copy of IFEval
    fills every key); a missing one is an error, since the checker would otherwise invent a
    random value and the score would change from run to run."""
    registry = offline_checkers()
    cls = registry.get(instruction_id)
    if cls is None:
        import difflib

        close = difflib.get_close_matches(instruction_id, registry, n=2)
        raise EvalError(
            f"{where}: unknown instruction id {instruction_id!r}",
            hint=f"did you mean {', '.join(close)}?" if close else "see IFEval's instruction ids",
        )
    given = {k: v for k, v in kwargs.items() if v is not None}
    checker = cls(instruction_id)
    missing = [k for k in checker.get_instruction_args_keys() if k not in given]
    if missing:
        raise EvalError(f"{where}: {instruction_id} needs argument(s) {', '.join(missing)}")
    try:
        checker.build_description(**given)
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=prompt)
    except Exception as exc:
        raise EvalError(f"{where}: {instruction_id}: bad arguments {given}: {exc}") from exc
    return checker


class InstructionsSuite:
    name = "instructions"
    version = "1"
    description = "IFEval-style verifiable instructions: prompt/instruction level, strict/loose"
    max_tokens = 384

    def accepts(self, record: dict[str, Any]) -> bool:
        return "instruction_id_list" in record

    def load(self, path: Path | None) -> list[Item]:
        path = source_of(self.name, path)
        items = []
        for number, record in read_jsonl(path):
            where = f"{path}:{number}"
            ids = require(record, "instruction_id_list", list, where)
            kwargs = record.get("kwargs", [{}] * len(ids))
            prompt = require(record, "prompt", str, where)
            if not isinstance(kwargs, list) or len(kwargs) != len(ids):
                raise EvalError(
                    f"{where}: 'kwargs' must be a list with one object per instruction id "
                    f"({len(ids)})"
                )
            if not ids:
                raise EvalError(f"{where}: 'instruction_id_list' is empty: nothing to check")
            for iid, kw in zip(ids, kwargs, strict=True):
                if not isinstance(iid, str) or not isinstance(kw, dict):
                    raise EvalError(f"{where}: instruction ids are strings, kwargs objects")
                build_checker(iid, kw, prompt, where)  # fail now, not after generating
            key = record.get("key", number)
            items.append(
                Item(
                    id=str(key),
                    prompt=prompt,
                    data={"instruction_id_list": ids, "kwargs": kwargs},
                    where=where,
                )
            )
        return items

    def score(self, items: list[Item], outputs: list[str]) -> Score:
        from if_verifiable.common import get_loose_transformations

        prompts_strict = prompts_loose = followed_strict = followed_loose = total = errors = 0
        details = []
        for item, output in zip(items, outputs, strict=True):
            variants = get_loose_transformations(output)
            strict_list, loose_list, problems = [], [], []
            for iid, kw in zip(item.data["instruction_id_list"], item.data["kwargs"], strict=True):
                checker = build_checker(iid, kw, item.prompt, item.where)
                try:
                    strict = bool(output.strip()) and bool(checker.check_following(output))
                    loose = any(v.strip() and checker.check_following(v) for v in variants)
                except Exception as exc:  # counted and reported, never skipped
                    errors += 1
                    strict = loose = False
                    problems.append(f"{iid}: {type(exc).__name__}: {exc}")
                strict_list.append(strict)
                loose_list.append(loose)
            total += len(strict_list)
            followed_strict += sum(strict_list)
            followed_loose += sum(loose_list)
            prompts_strict += all(strict_list)
            prompts_loose += all(loose_list)
            details.append(
                {
                    "id": item.id,
                    "instructions": item.data["instruction_id_list"],
                    "strict": strict_list,
                    "loose": loose_list,
                    **({"errors": problems} if problems else {}),
                }
            )
        n = len(items)
        return Score(
            metrics={
                "prompt_strict": prompts_strict / n,
                "prompt_loose": prompts_loose / n,
                "instruction_strict": followed_strict / total,
                "instruction_loose": followed_loose / total,
            },
            counts={"prompts": n, "instructions": total, "checker_errors": errors},
            items=details,
        )


SUITE = InstructionsSuite()
