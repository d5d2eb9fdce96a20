"""One evaluation: resolve every suite and model first (so a typo fails in a second, not after
an hour of generation), generate each model's answers once per suite (from the cache when
nothing that determines them changed), score them, judge pairs, and return one document that
records what was run and how: models' hashes and templates, suites' hashes and versions,
generation settings, and per model, per suite, per metric."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cuvee.eval.backends import Backend, GenerationSettings, open_backend
from cuvee.eval.cache import GenerationCache, cache_key
from cuvee.eval.suites import EvalError, Item, ResolvedSuite, Score, resolve_suite
from cuvee.progress import Reporter, SilentReporter

if TYPE_CHECKING:
    from cuvee.config import Settings

DEFAULT_SEED = 0


@dataclass
class SuiteRun:
    """A suite as run: its items after ``--limit`` and the generation settings it used."""

    resolved: ResolvedSuite
    items: list[Item]
    generation: GenerationSettings

    @property
    def label(self) -> str:
        return self.resolved.label

    @property
    def compares(self) -> bool:
        return bool(getattr(self.resolved.suite, "compares", False))

    def describe(self, limit: int | None) -> dict[str, Any]:
        suite = self.resolved.suite
        return {
            "name": suite.name,
            "version": suite.version,
            "sha256": self.resolved.sha256,
            "file": None if self.resolved.packaged else str(self.resolved.path),
            "items": len(self.items),
            "limit": limit,
            **self.generation.as_dict(),
        }


@dataclass
class EvalResult:
    document: dict[str, Any]
    suites: list[SuiteRun]
    outputs: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    scores: dict[str, dict[str, Score]] = field(default_factory=dict)


class Generator:
    """Answers from a backend through the cache; counts what it had to generate."""

    def __init__(self, cache: GenerationCache | None, reporter: Reporter) -> None:
        self.cache = cache
        self.reporter = reporter
        self.generated = 0  # items actually sent to a model (0 on a fully cached re-run)

    def __call__(
        self,
        backend: Backend,
        identity: dict[str, Any],
        items: list[Item],
        suite: dict[str, Any],
        generation: GenerationSettings,
        title: str,
        suite_file: str | None = None,
    ) -> tuple[list[str], bool]:
        key = cache_key(identity, suite, generation.as_dict())
        if self.cache is not None:
            cached = self.cache.get(key, len(items))
            if cached is not None:
                self.reporter.step(f"{title}: {len(items)} answers from the cache")
                return cached, True
        with self.reporter.items(title, len(items)) as advance:
            outputs = backend.generate(items, generation, advance)
        self.generated += len(items)
        if self.cache is not None:
            record = {"model": identity, "suite": suite, "settings": generation.as_dict()}
            # where the suite came from, for whoever reads answers back (not in the key: the
            # file's sha256 is, so a moved file still hits)
            record["ids"], record["suite_file"] = [i.id for i in items], suite_file
            self.cache.put(key, outputs, record)
        return outputs, False


def _prompts_sha(items: list[Item]) -> str:
    blob = json.dumps([[i.id, i.system, i.prompt] for i in items], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _judge_settings(run: SuiteRun, seed: int) -> GenerationSettings:
    return GenerationSettings(
        max_tokens=getattr(run.resolved.suite, "judge_max_tokens", 256), seed=seed
    )


def run_evaluation(
    settings: Settings,
    models: list[str],
    suites: list[str],
    *,
    limit: int | None = None,
    judge: str | None = None,
    max_tokens: int | None = None,
    seed: int = DEFAULT_SEED,
    use_cache: bool = True,
    reporter: Reporter | None = None,
) -> EvalResult:
    reporter = reporter or SilentReporter()
    if not models:
        raise EvalError("give at least one model to evaluate")
    if len(set(models)) != len(models):
        raise EvalError("a model is named twice", hint="name each model once")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit {limit} must be at least 1")
    if max_tokens is not None and max_tokens < 1:
        raise EvalError(f"--max-tokens {max_tokens} must be at least 1")
    runs = []
    for spec in suites:
        resolved = resolve_suite(spec, settings)
        generation = GenerationSettings(
            max_tokens=max_tokens or resolved.suite.max_tokens, seed=seed
        )
        runs.append(SuiteRun(resolved, resolved.items[:limit], generation))
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise EvalError("a suite is named twice", hint="name each suite once")
    comparing = [r for r in runs if r.compares]
    if comparing and len(models) < 2:
        raise EvalError(
            f"the {comparing[0].label} suite compares models: give at least two",
            hint="the first model is the reference the others are judged against",
        )
    if comparing and not judge:
        raise EvalError(
            f"the {comparing[0].label} suite needs a judge model",
            hint="--judge openai:BASE_URL#MODEL_ID (any OpenAI-compatible endpoint)",
        )

    backends = [open_backend(settings, spec) for spec in models]
    judge_backend = open_backend(settings, judge) if comparing and judge else None
    generate = Generator(GenerationCache(settings.home) if use_cache else None, reporter)
    result = EvalResult(document={}, suites=runs)
    try:
        identities = {b.label: b.prepare(reporter) for b in backends}
        judge_identity = judge_backend.prepare(reporter) if judge_backend else None
        for backend in backends:  # one model at a time: one engine in memory
            try:
                for run in runs:
                    suite_key = {
                        "name": run.resolved.suite.name,
                        "version": run.resolved.suite.version,
                        "sha256": run.resolved.sha256,
                        "limit": limit,
                    }
                    outputs, cached = generate(
                        backend,
                        identities[backend.label],
                        run.items,
                        suite_key,
                        run.generation,
                        f"{backend.label} · {run.label}",
                        None if run.resolved.packaged else str(run.resolved.path),
                    )
                    result.outputs.setdefault(backend.label, {})[run.label] = outputs
                    score = run.resolved.suite.score(run.items, outputs)
                    score.counts["cached"] = int(cached)
                    result.scores.setdefault(backend.label, {})[run.label] = score
            finally:
                backend.close()
        for run in comparing:
            reference = models[0]
            judge_settings = _judge_settings(run, seed)

            def ask_judge(
                prompts: list[Item], run: SuiteRun = run, judge_settings=judge_settings
            ) -> list[str]:
                suite_key = {
                    "name": f"{run.resolved.suite.name}-judge",
                    "version": run.resolved.suite.version,
                    "sha256": _prompts_sha(prompts),
                }
                title = f"judge {judge_backend.label} · {run.label}"
                return generate(
                    judge_backend, judge_identity, prompts, suite_key, judge_settings, title
                )[0]

            for model in models[1:]:
                score = run.resolved.suite.compare(
                    run.items,
                    result.outputs[model][run.label],
                    result.outputs[reference][run.label],
                    ask_judge,
                    names=(model, reference),
                )
                score.counts["cached"] = result.scores[model][run.label].counts["cached"]
                result.scores[model][run.label] = score
    finally:
        for backend in backends:
            backend.close()
        if judge_backend is not None:
            judge_backend.close()

    document: dict[str, Any] = {
        "settings": {"temperature": 0.0, "seed": seed, "limit": limit, "max_tokens": max_tokens},
        "suites": {r.label: r.describe(limit) for r in runs},
        "models": identities,
        "results": {
            model: {
                label: {"metrics": score.metrics, "counts": score.counts}
                for label, score in by_suite.items()
            }
            for model, by_suite in result.scores.items()
        },
        "generated": generate.generated,
    }
    for run in comparing:
        document["suites"][run.label].update(
            reference=models[0],
            judge=judge_identity,
            judge_settings=_judge_settings(run, seed).as_dict(),
        )
    result.document = document
    return result
