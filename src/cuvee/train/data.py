"""The data side of a run: read and declare the files, split off the held-out set, tokenize, pack.

Records labelled ``split: heldout`` are never trained on, whatever the recipe says."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cuvee.chat_template import get_template
from cuvee.data.formats import read_file
from cuvee.data.records import Conversation
from cuvee.data.validate import read_declaration
from cuvee.errors import ConfigError, DataError
from cuvee.licences import resolve_licence
from cuvee.store import ModelStore, StoredModel
from cuvee.tokenizer import load_tokenizer, special_tokens
from cuvee.train.encode import Encoder
from cuvee.train.lineage import DataSource
from cuvee.train.packing import Row, pack
from cuvee.train.recipe import Recipe

STARTER = "starter"


def _starter() -> tuple[list[Conversation], DataSource]:
    from cuvee.data.starter import LICENCE, load_starter, starter_files

    digest = hashlib.sha256()
    for path in starter_files():
        digest.update(path.read_bytes())
    records = load_starter("all")
    source = DataSource(
        path="starter (bundled with cuvee)",
        sha256=digest.hexdigest(),
        records=len(records),
        licence=resolve_licence(LICENCE),
        authors=("cuvee contributors",),
        declared_by="cuvee",
    )
    return records, source


def refuse_problems(spec: str, problems: list) -> None:
    """Stop a run whose data file has invalid records, showing the first five."""
    if not problems:
        return
    shown = "\n  ".join(str(p) for p in problems[:5])
    more = len(problems) - 5
    raise DataError(
        f"{spec}: {len(problems)} invalid record(s):\n  {shown}"
        + (f"\n  ... and {more} more" if more > 0 else ""),
        hint=f"see them all with `cuvee data check {spec}`",
    )


def load_data(specs: list[str]) -> tuple[list[Conversation], list[DataSource]]:
    """Every record of every file, or a DataError naming the first bad records; nothing is
    trained on a file with invalid records."""
    if not specs:
        raise DataError("no training data given", hint="pass --data FILE (or --data starter)")
    records: list[Conversation] = []
    sources: list[DataSource] = []
    for spec in specs:
        if spec == STARTER and not Path(spec).exists():
            recs, source = _starter()
        else:
            path = Path(spec)
            if not path.is_file():
                raise DataError(f"{spec}: no such data file")
            result = read_file(path)
            refuse_problems(spec, result.problems)
            if not result.records:
                raise DataError(f"{spec}: no records")
            declaration = read_declaration(path)
            recs = result.records
            source = DataSource(
                path=str(path),
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                records=len(recs),
                licence=declaration.licence,
                authors=declaration.authors,
                declared_by=declaration.declared_by,
            )
        records += recs
        sources.append(source)
    return records, sources


@dataclass(frozen=True)
class Split:
    train: list[Conversation]
    eval: list[Conversation]
    how: str


def split_records(
    records: list[Conversation], eval_split: float | str, seed: int, max_eval: int
) -> Split:
    heldout = [r for r in records if r.split == "heldout"]
    rest = [r for r in records if r.split != "heldout"]
    if eval_split == "none":
        return Split(rest, [], f"no evaluation; {len(heldout)} held-out records left out")
    if eval_split == "auto" and heldout:
        return Split(rest, heldout[:max_eval], "records labelled split: heldout")
    fraction = 0.05 if eval_split == "auto" else float(eval_split)
    order = list(range(len(rest)))
    random.Random(seed).shuffle(order)
    n_eval = min(max_eval, round(len(rest) * fraction))
    if fraction > 0 and len(rest) >= 20:
        n_eval = max(n_eval, 1)
    chosen = set(order[:n_eval])
    train = [r for i, r in enumerate(rest) if i not in chosen]
    evals = [r for i, r in enumerate(rest) if i in chosen]
    how = f"{fraction:.0%} random held-out slice (seed {seed})"
    if heldout:
        how += f"; {len(heldout)} records labelled heldout also left out"
    return Split(train, evals, how)


def augment_train(split: Split, per_record: int, seed: int) -> Split:
    """The split with up to ``per_record`` format-constrained variants of each training record
    added after the originals (the evaluation records stay as they are: a rewritten copy of a
    held-out answer in the training set would leak it)."""
    if per_record <= 0:
        return split
    from cuvee.data.augment import augment_records

    variants = list(augment_records(split.train, per_record=per_record, seed=seed))
    how = f"{split.how}; {len(variants)} format-constrained variants added for training"
    return Split(split.train + variants, split.eval, how)


@dataclass
class Prepared:
    """Everything decided before the first step."""

    recipe: Recipe
    base: StoredModel
    sources: list[DataSource]
    train_rows: list[Row]
    eval_rows: list[Row]
    split_how: str
    encode_stats: dict[str, Any]
    train_records: int
    eval_records: int
    template: str
    turn_token_ids: list[int]


def prepare(store: ModelStore, recipe: Recipe) -> Prepared:
    base = store.get(recipe.base)
    template = get_template(base.manifest.chat_template)
    records, sources = load_data(recipe.data)
    split = split_records(records, recipe.eval_split, recipe.seed, recipe.max_eval_records)
    split = augment_train(split, recipe.augment, recipe.seed)
    if not split.train:
        raise ConfigError("no training records left after holding out the evaluation set")
    tokenizer = load_tokenizer(base.path)
    bos, eos = special_tokens(base.path)
    encoder = Encoder(
        tokenizer, template, bos_token=bos, eos_token=eos, train_on_prompt=recipe.train_on_prompt
    )
    train_ex, stats = encoder.encode_all(split.train, recipe.seq_len)
    eval_ex, _ = encoder.encode_all(split.eval, recipe.seq_len)
    if not train_ex:
        raise ConfigError("no training record has anything left to learn after truncation")
    pad_id = tokenizer.token_to_id("<pad>")
    pad_id = 0 if pad_id is None else pad_id
    return Prepared(
        recipe=recipe,
        base=base,
        sources=sources,
        train_rows=pack(train_ex, recipe.seq_len, pad_id, packing=recipe.packing, seed=recipe.seed),
        eval_rows=pack(eval_ex, recipe.seq_len, pad_id, packing=recipe.packing, seed=recipe.seed),
        split_how=split.how,
        encode_stats=stats.__dict__,
        train_records=len(split.train),
        eval_records=len(split.eval),
        template=template.family,
        turn_token_ids=sorted(
            {i for t in template.turn_tokens if (i := tokenizer.token_to_id(t)) is not None}
        ),
    )
