"""``POST /v1/votes``: people's verdicts on two models' answers, from the web UI's compare screen.

Each vote is one line of ``$CUVEE_HOME/eval/pairwise-votes.jsonl`` in the pairwise suite's own
format (``id``, ``prompt``, ``system``, ``category``) with the verdict under ``vote``, so
``cuvee eval A B --suite pairwise --data $CUVEE_HOME/eval/pairwise-votes.jsonl`` runs the two
models on the voted prompts and reports, beside its judge's verdicts, the people's own and how
often the judge agreed with them. A key votes only on models it may use (404 otherwise, as
everywhere in /v1); the key's name, never its secret, is recorded."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cuvee.serve import errors
from cuvee.serve.keys import ApiKey
from cuvee.serve.schemas import VoteRequest

VOTES_FILE = "pairwise-votes.jsonl"
_LOCK = threading.Lock()  # one line at a time, whole


def votes_path(home: Path) -> Path:
    return Path(home) / "eval" / VOTES_FILE


def record(body: VoteRequest, key: ApiKey | None) -> dict[str, Any]:
    return {
        "id": f"vote-{uuid.uuid4().hex[:12]}",
        "prompt": body.prompt,
        "system": body.system,
        "category": "vote",
        "vote": {
            "a": body.a.model,
            "b": body.b.model,
            "winner": body.winner,
            "answer_a": body.a.answer,
            "answer_b": body.b.answer,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "key": key.name if key is not None else None,
        },
    }


def append(home: Path, body: VoteRequest, key: ApiKey | None) -> dict[str, Any]:
    """Append the vote (blocking: a worker thread); the route has checked both models."""
    if body.a.model == body.b.model:
        raise errors.invalid_param("'a' and 'b' name the same model.", "b.model")
    line = json.dumps(record(body, key), ensure_ascii=False) + "\n"
    path = votes_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK, path.open("a", encoding="utf-8") as out:
        out.write(line)
        out.flush()
        os.fsync(out.fileno())
    vote = json.loads(line)
    return {"object": "vote", "id": vote["id"], "winner": body.winner}
