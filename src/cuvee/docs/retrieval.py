"""Hybrid retrieval: BM25 (FTS5) and vector search fused by reciprocal rank.

BM25 finds the rare exact words (a product code, a name, a French term) that a small embedding
model blurs; vectors find the paraphrases BM25 misses. Reciprocal-rank fusion (score = sum over
the two lists of 1 / (60 + rank)) combines them without calibrating their scales against each
other. An optional reranker from the RERANKERS registry reorders the fused candidates."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from cuvee.docs.embedders import Backend
from cuvee.docs.index import Collection
from cuvee.docs.textnorm import fts_query, terms


def _similarities(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """Cosine similarities (unit vectors: dot products), computed by torch rather than numpy:
    numpy's BLAS keeps its own threads spinning after a call, and the next question's
    embedding (torch's threads) then waits for them: 100 ms lost on one query in twenty."""
    import torch

    return torch.mv(
        torch.from_numpy(matrix), torch.from_numpy(np.ascontiguousarray(vector))
    ).numpy()


RRF_K = 60
CANDIDATES = 50


@dataclass
class Hit:
    chunk_id: int
    doc_id: int
    doc: str
    title: str
    section: str
    start: int
    end: int
    text: str
    score: float
    scores: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


Reranker = Callable[[str, list[Hit]], list[Hit]]


def _term_coverage(question: str, hits: list[Hit]) -> list[Hit]:
    """Reorder by how many of the question's distinct terms each chunk contains (ties keep the
    fused order): cheap, and a good guard against a chunk that is merely on-topic."""
    wanted = set(terms(question))
    if not wanted:
        return hits

    def coverage(hit: Hit) -> float:
        have = set(terms(f"{hit.title} {hit.section} {hit.text}"))
        return len(wanted & have) / len(wanted)

    for hit in hits:
        hit.scores["coverage"] = round(coverage(hit), 4)
    return sorted(hits, key=lambda h: -h.scores["coverage"])


RERANKERS: dict[str, Reranker | None] = {"none": None, "coverage": _term_coverage}


def _keep_each_best(order: list[int], fused: dict[int, dict], k: int) -> list[int]:
    """The fused order, with each retriever's own best chunk moved into the first ``k``. Fusion
    by rank alone drops a chunk that only one list found, however clearly: a ticket number
    matched exactly by BM25 (its rank 1) but far down the vector list scores below chunks both
    lists found in the middle. The best of each list is evidence enough to be read."""
    firsts = [
        cid for key in ("bm25_rank", "vector_rank") for cid in order if fused[cid].get(key) == 1
    ]
    top = order[:k]
    for cid in firsts:
        if cid not in top:
            # it takes the place of the weakest fused chunk that is no list's best
            for i in range(len(top) - 1, -1, -1):
                if top[i] not in firsts:
                    top[i] = cid
                    break
    top_set = set(top)
    return sorted(top, key=order.index) + [cid for cid in order if cid not in top_set]


def retrieve(
    collection: Collection,
    backend: Backend,
    question: str,
    k: int = 5,
    *,
    reranker: str = "none",
    candidates: int = CANDIDATES,
    question_vector: np.ndarray | None = None,
) -> list[Hit]:
    if k < 1:
        raise ValueError("k must be at least 1")
    if reranker not in RERANKERS:
        raise ValueError(f"unknown reranker {reranker!r} (known: {', '.join(RERANKERS)})")
    collection.check_embedder(backend.identity, backend.dim)
    fused: dict[int, dict] = {}

    query = fts_query(question)
    if query:
        for rank, (chunk_id, score) in enumerate(collection.bm25(query, candidates), 1):
            fused.setdefault(chunk_id, {})
            fused[chunk_id].update(bm25=round(score, 4), bm25_rank=rank)

    ids, matrix = collection.matrix()
    if len(ids):
        vector = question_vector if question_vector is not None else backend.embed([question])[0]
        sims = _similarities(matrix, vector)
        top = min(candidates, len(ids))
        best = np.argpartition(-sims, top - 1)[:top]
        best = best[np.argsort(-sims[best])]
        for rank, index in enumerate(best, 1):
            chunk_id = int(ids[index])
            fused.setdefault(chunk_id, {})
            fused[chunk_id].update(cosine=round(float(sims[index]), 4), vector_rank=rank)

    for scores in fused.values():
        scores["rrf"] = sum(
            1.0 / (RRF_K + scores[key]) for key in ("bm25_rank", "vector_rank") if key in scores
        )
    order = _keep_each_best(sorted(fused, key=lambda cid: -fused[cid]["rrf"]), fused, k)
    pool = order[: max(k, candidates if RERANKERS[reranker] else k)]
    rows = collection.chunk_rows(pool)
    pool = [cid for cid in pool if cid in rows]  # a concurrent `docs sync` may have removed some
    hits = [
        Hit(
            chunk_id=cid,
            doc_id=rows[cid]["doc_id"],
            doc=rows[cid]["doc"],
            title=rows[cid]["title"],
            section=rows[cid]["section"],
            start=rows[cid]["start"],
            end=rows[cid]["end"],
            text=rows[cid]["text"],
            score=round(fused[cid]["rrf"], 6),
            scores=fused[cid],
        )
        for cid in pool
    ]
    rerank = RERANKERS[reranker]
    if rerank is not None:
        hits = rerank(question, hits)
    return hits[:k]
