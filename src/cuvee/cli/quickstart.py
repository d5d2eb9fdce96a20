"""`cuvee quickstart`: pull, fine-tune, evaluate, export, index and serve, in one command.

The steps are a list of :class:`Step` objects, each with a check ("is it done?") and an action
that runs the same command a user would type, in this process, so the quickstart never drifts
from the commands it teaches:

1. pull the base model (``cuvee models pull``);
2. fine-tune it on the bundled starter set within a time budget (``cuvee train
   starter-lora-cpu``: the shipped recipe, with format-constrained variants of the records);
3. evaluate base and fine-tune on a slice of the ``instructions`` suite and of the starter
   set's held-out records (``cuvee eval``; the results are cached, so a second run is
   instant);
4. export the fine-tune to GGUF q8_0 (``cuvee export``), what the engine runs;
5. index the bundled document set into the ``sample`` collection (``cuvee docs add``;
   unchanged files are skipped by hash);
6. print what to try, then serve both models (``cuvee serve``) until Ctrl-C.

With ``--preference``, two steps follow the fine-tune: preference pairs from the fine-tune's own
answers to format-constrained starter prompts, scored by checks that need no judge (``cuvee data
augment`` then ``cuvee data pairs``, plus ``--from-augment`` pairs), and DPO on them (``cuvee
train starter-dpo-cpu --base NAME``) into NAME-dpo, which is then evaluated, exported and served
beside the others.

What it works on (recipe, suite, documents) is in :mod:`cuvee.quickstart`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from cuvee.quickstart import (
    EVAL_SUITE,
    PAIR_PROMPTS,
    PREFERENCE_RECIPE,
    SAMPLE_COLLECTION,
    STARTER_RECIPE,
    sample_documents,
)

if TYPE_CHECKING:
    from cuvee.config import Settings


@dataclass
class Plan:
    settings: Any
    base: str
    name: str
    time_budget: str
    eval_limit: int
    port: int
    serve: bool
    preference: bool = False
    preference_budget: str = "10m"
    pair_prompts: int = PAIR_PROMPTS

    @property
    def home_args(self) -> list[str]:
        return ["--home", str(self.settings.home)]

    @property
    def dpo_name(self) -> str:
        return f"{self.name}-dpo"

    @property
    def tuned(self) -> list[str]:
        """The models this run trains, in order."""
        return [self.name, self.dpo_name] if self.preference else [self.name]

    def work(self, filename: str):
        return self.settings.home / "quickstart" / filename


def invoke(plan: Plan, *args: str) -> None:
    """Run a cuvee command in this process, exactly as typed (same code, same output)."""
    from cuvee.cli import cli

    cli.main(args=[*plan.home_args, *args], prog_name="cuvee", standalone_mode=False)


def _store(plan: Plan):
    from cuvee.store import ModelStore

    return ModelStore(plan.settings.models_dir)


@dataclass(frozen=True)
class Step:
    title: str
    done: Callable[[Plan], str | None]  # why it can be skipped, or None
    run: Callable[[Plan], None]


def _pulled(plan: Plan) -> str | None:
    return f"{plan.base} is in the store" if _store(plan).exists(plan.base) else None


def _pull(plan: Plan) -> None:
    invoke(plan, "models", "pull", plan.base)


def _trained(plan: Plan) -> str | None:
    return f"{plan.name} is in the store" if _store(plan).exists(plan.name) else None


def _train(plan: Plan) -> None:
    invoke(
        plan,
        "train",
        STARTER_RECIPE,
        "--base",
        plan.base,
        "--name",
        plan.name,
        "--time-budget",
        plan.time_budget,
    )


def _pair_files(plan: Plan):
    return plan.work(f"{plan.name}-pairs.jsonl"), plan.work(f"{plan.name}-augment-pairs.jsonl")


def _pairs_built(plan: Plan) -> str | None:
    if all(path.exists() for path in _pair_files(plan)):
        return f"{_pair_files(plan)[0].name} is there"
    return None


def _build_pairs(plan: Plan) -> None:
    """Format-constrained variants of the starter set's training prompts, answered 4 times each
    by the fine-tune and scored by their constraints (and the other checks that apply); plus
    each variant's rewritten answer over its original where the original breaks the rule."""
    from cuvee.data.starter import write_split

    records, prompts = plan.work("starter-train.jsonl"), plan.work("pair-prompts.jsonl")
    pairs, augmented = _pair_files(plan)
    write_split(records, "train")
    invoke(plan, "data", "augment", str(records), "-o", str(prompts), "--no-originals",
           "--seed", "1")  # fmt: skip
    invoke(plan, "data", "pairs", "--from-augment", "--data", str(prompts), "-o", str(augmented))
    invoke(plan, "data", "pairs", "--model", plan.name, "--data", str(prompts), "-k", "4",
           "--limit", str(plan.pair_prompts), "-o", str(pairs))  # fmt: skip


def _preference_tuned(plan: Plan) -> str | None:
    return f"{plan.dpo_name} is in the store" if _store(plan).exists(plan.dpo_name) else None


def _preference_tune(plan: Plan) -> None:
    pairs, augmented = _pair_files(plan)
    invoke(plan, "train", PREFERENCE_RECIPE, "--base", plan.name, "--data", str(pairs),
           "--data", str(augmented), "--name", plan.dpo_name, "--time-budget",
           plan.preference_budget)  # fmt: skip


def _evaluate(plan: Plan) -> None:
    from cuvee.data.starter import HELDOUT_SUITE, write_heldout_suite

    heldout = plan.work(HELDOUT_SUITE)
    write_heldout_suite(heldout)
    invoke(
        plan,
        "eval",
        plan.base,
        *plan.tuned,
        "--suite",
        EVAL_SUITE,
        "--suite",
        f"tasks={heldout}",
        "--limit",
        str(plan.eval_limit),
    )


def _exported(plan: Plan) -> str | None:
    from cuvee.export.formats import find_export

    store = _store(plan)
    if all(store.exists(n) and find_export(store.get(n), "gguf", "q8_0") for n in plan.tuned):
        return "a q8_0 GGUF is recorded"
    return None


def _export(plan: Plan) -> None:
    from cuvee.export.formats import find_export

    store = _store(plan)
    for name in plan.tuned:
        if not find_export(store.get(name), "gguf", "q8_0"):
            invoke(plan, "export", name, "--format", "gguf", "--quant", "q8_0")


def _index(plan: Plan) -> None:
    invoke(plan, "docs", "add", SAMPLE_COLLECTION, str(sample_documents()))


STEPS: list[Step] = [
    Step("pull the base model", _pulled, _pull),
    Step("fine-tune on the starter set", _trained, _train),
    Step("evaluate base and fine-tune", lambda plan: None, _evaluate),
    Step("export the fine-tune to GGUF", _exported, _export),
    Step("index the sample documents", lambda plan: None, _index),
]
# --preference: after the fine-tune, before the evaluation
PREFERENCE_STEPS: list[Step] = [
    Step("build preference pairs from the fine-tune's answers", _pairs_built, _build_pairs),
    Step("preference-tune (DPO) the fine-tune", _preference_tuned, _preference_tune),
]


def steps_of(plan: Plan) -> list[Step]:
    if not plan.preference:
        return STEPS
    return STEPS[:2] + PREFERENCE_STEPS + STEPS[2:]


def try_these(plan: Plan) -> str:
    url = f"http://127.0.0.1:{plan.port}/v1"
    return f"""
Try it:

  http://127.0.0.1:{plan.port}/ui   in a browser: chat, compare {plan.base} with {plan.name},
                                   ask the documents, train, evaluate

  cuvee chat {plan.tuned[-1]}
  cuvee ask {SAMPLE_COLLECTION} "How many days of annual leave do I get?" --model {plan.name}
  cuvee eval {plan.base} {" ".join(plan.tuned)} --suite tasks --limit 20 --report report.html

  curl {url}/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{plan.name}", "messages": [{{"role": "user", "content": "Name 3 fruits."}}]}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="{url}", api_key="none"); \\
print(c.chat.completions.create(model="rag:{SAMPLE_COLLECTION}", messages=[{{"role": "user", \\
"content": "What is the nightly hotel limit in capital cities?"}}]).choices[0].message.content)'
"""


def run(plan: Plan) -> None:
    steps = steps_of(plan)
    total = len(steps) + int(plan.serve)
    for number, step in enumerate(steps, 1):
        skipped = step.done(plan)
        if skipped:
            click.secho(f"[{number}/{total}] {step.title}: done already ({skipped})", fg="green")
            continue
        click.secho(f"[{number}/{total}] {step.title}", bold=True)
        step.run(plan)
    click.echo(try_these(plan))
    if plan.serve:
        models = [*plan.tuned, plan.base]
        click.secho(f"[{total}/{total}] serving {', '.join(models)}", bold=True)
        flags = [x for name in models for x in ("--model", name)]
        invoke(plan, "serve", *flags, "--port", str(plan.port))


@click.command(
    epilog="""Examples:

\b
  cuvee quickstart                         # about 10 minutes of training, then serves on :8000
  cuvee quickstart --time-budget 30m --name mine
  cuvee quickstart --no-serve              # stop after indexing (for scripts)
  cuvee quickstart --preference            # then pairs from its own answers and DPO (~20 min more)

Every step is skipped when its result is already there: running it again goes straight to
serving."""
)
@click.option(
    "--time-budget", default="10m", show_default=True, help="Training time, e.g. 10m, 1h."
)
@click.option("--name", default="quickstart", show_default=True, help="Name of the fine-tune.")
@click.option("--base", default=None, help="Base model [the default_base setting].")
@click.option(
    "--eval-limit",
    type=click.IntRange(1),
    default=20,
    show_default=True,
    help="Instruction-following prompts in the base-vs-tuned comparison.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--no-serve", is_flag=True, help="Do everything but start the server.")
@click.option(
    "--preference",
    is_flag=True,
    help="After the fine-tune, build preference pairs from its own answers (scored by checks, "
    "no judge) and DPO-tune it into NAME-dpo.",
)
@click.option(
    "--preference-budget",
    default="10m",
    show_default=True,
    help="DPO training time (after the pairs and the one reference pass).",
)
@click.option(
    "--pair-prompts",
    type=click.IntRange(1),
    default=PAIR_PROMPTS,
    show_default=True,
    help="Starter prompts the fine-tune answers (4 times each) for --preference's pairs.",
)
@click.pass_obj
def quickstart(
    settings: Settings,
    time_budget,
    name,
    base,
    eval_limit,
    port,
    no_serve,
    preference,
    preference_budget,
    pair_prompts,
) -> None:
    """The whole recipe on this machine: pull the base model, fine-tune it on the bundled
    starter set within --time-budget, compare base and fine-tune, export to GGUF, index the
    bundled documents, and serve both models through the OpenAI-compatible API."""
    from cuvee.train.recipe import parse_duration

    for flag, value in (("--time-budget", time_budget), ("--preference-budget", preference_budget)):
        try:
            parse_duration(value)  # a bad budget fails before anything runs
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=flag) from exc
    run(
        Plan(
            settings=settings,
            base=base or settings.default_base,
            name=name,
            time_budget=time_budget,
            eval_limit=eval_limit,
            port=port,
            serve=not no_serve,
            preference=preference,
            preference_budget=preference_budget,
            pair_prompts=pair_prompts,
        )
    )
