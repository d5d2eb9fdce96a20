"""What `cuvee quickstart` works on: the shipped recipe it trains with, the suite it compares on,
and the bundled documents it indexes. The steps themselves, which run the same commands a user
would type, are the `quickstart` command of the CLI package (cli/quickstart.py); this module
knows nothing of the CLI."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SAMPLE_COLLECTION = "sample"
STARTER_RECIPE = "starter-lora-cpu"
EVAL_SUITE = "instructions"
# --preference: the DPO recipe, and how many starter prompts the fine-tune answers for pairs
# (4 answers each; about 5 minutes on a 2-core CPU, a third to a half of them yield a pair)
PREFERENCE_RECIPE = "starter-dpo-cpu"
PAIR_PROMPTS = 120


def sample_documents() -> Path:
    """The bundled document set indexed into the ``sample`` collection."""
    return Path(str(resources.files("cuvee.docs") / "sample" / "docs"))
