"""Document search and grounded answers: ingest speed, retrieval latency, QA quality.

Measured in one run, on this machine's cores:

(a) ingest throughput: chunks per second through `cuvee docs add` (reading, chunking,
    embedding with the default backend: length-sorted batches, bfloat16 matrix products where
    the CPU has them, and the SQLite writes), against the baseline of plain fp32 embedding of
    the same chunk texts batched as `SentenceTransformer.encode` batches them (sorted by
    character length, longest first, batch 32, vectors put back in input order), run in the
    same process; plus the parity of the two: the cosine between their vectors and the
    overlap of the top-5 chunks each retrieves for the same questions;
(b) retrieval latency p50 and p95 of a full `retrieve()` (question embedding, BM25, vector
    search, fusion, reading the rows) at about 1k and 10k chunks;
(c) the answer metrics of `cuvee docs eval` on the shipped evaluation set (cuvee/docs/evalset:
    20 documents, English and French, 205 questions, a fifth unanswerable), per half (`dev`,
    which tuning looked at; `heldout`, which it did not), for cuvee's answerer and, on the
    same retrieval, the `plain` baseline (the same model's text, unchecked) and the
    `extractive` one (the best-overlapping sentence, no model); `--model` picks the model
    (default the configured chat model, else the base model), `--no-qa` skips it, and
    `ask_p50_s` is the answerer's time per question.

The corpus is built from ../shared/data (instruction data sets: each record becomes a section
of a Markdown document); nothing from there is stored in the repository.

    python bench/rag_bench.py [--quick] [--model NAME] [--no-qa]

The last line printed is one JSON object with the figures."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import describe

from cuvee.config import load_settings
from cuvee.docs import index
from cuvee.docs.embedders import LocalBackend, open_backend
from cuvee.docs.index import embedding_text
from cuvee.docs.ingest import ingest
from cuvee.docs.retrieval import retrieve
from cuvee.embeddings import Embedder, default_embedding_model_dir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = [
    "alpaca_en_demo.json",
    "dpo_en_demo.json",
    "kto_en_demo.json",
    "glaive_toolcall_en_demo.json",
]


def records() -> list[tuple[str, str]]:
    """(heading, body) pairs from the instruction data sets."""
    out: list[tuple[str, str]] = []
    for name in SOURCES:
        path = DATA / name
        if not path.is_file():
            continue
        for row in json.loads(path.read_text(encoding="utf-8")):
            if "instruction" in row:
                head = row["instruction"]
                body = "\n\n".join(
                    str(row.get(k) or "") for k in ("input", "output", "chosen") if row.get(k)
                )
            elif "conversations" in row:
                turns = row["conversations"]
                head = str(turns[0].get("value", ""))[:120]
                body = "\n\n".join(str(t.get("value", "")) for t in turns[1:])
            else:
                continue
            if isinstance(body, str) and body.strip():
                out.append((" ".join(head.split())[:150], body))
    if not out:
        sys.exit(f"no data found under {DATA}")
    return out


def write_corpus(folder: Path, rows: list[tuple[str, str]], per_doc: int = 25) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    questions = []
    for start in range(0, len(rows), per_doc):
        group = rows[start : start + per_doc]
        text = f"# Collection part {start // per_doc}\n\n" + "\n\n".join(
            f"## {head}\n\n{body}" for head, body in group
        )
        (folder / f"part-{start // per_doc:04d}.md").write_text(text, encoding="utf-8")
        questions.extend(head for head, _ in group[:2])
    return questions


def encode_like_sentence_transformers(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Embed as sentence-transformers' `encode` does: inputs sorted by character length,
    longest first, cut into batches of `embedder.batch_size` (so each batch pads to similar
    lengths), and the vectors returned in the order the texts came in."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    vectors, _ = embedder.embed([texts[i] for i in order])
    out = np.empty_like(vectors)
    out[order] = vectors
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def latency(collection, backend, questions: list[str]) -> dict:
    retrieve(collection, backend, questions[0], 5)  # warm the matrix cache
    times = []
    for question in questions:
        started = time.perf_counter()
        retrieve(collection, backend, question, 5)
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": round(percentile(times, 50), 1), "p95_ms": round(percentile(times, 95), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1k chunks only, 8 QA questions")
    parser.add_argument("--model", default=None, help="Model for the QA metrics.")
    parser.add_argument("--no-qa", action="store_true", help="Skip the QA metrics.")
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 2)
    rows = records()
    random.Random(0).shuffle(rows)
    work = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    home = work / "home"
    machine = describe()
    results: dict = {"cores": os.cpu_count()}

    backend = open_backend(None)
    assert isinstance(backend, LocalBackend)
    print(f"embedding model {backend.identity}, precision {backend.precision}", flush=True)

    # (a) ingest about 1k chunks
    small = work / "small"
    questions = write_corpus(small, rows[:900])
    coll = index.create(home, "small", backend.identity, backend.dim)
    started = time.perf_counter()
    report = ingest(coll, backend, [small])
    seconds = time.perf_counter() - started
    chunks = sum(d.chunks for d in coll.documents())
    texts = [
        embedding_text(title, section, text)
        for title, section, text in coll.db.execute(
            "SELECT d.title, c.section, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "ORDER BY c.id"
        )
    ]
    tokens = backend._embedder.count_tokens(texts) / len(texts)
    results["ingest_chunks"] = chunks
    results["ingest_chunks_per_s"] = round(chunks / seconds, 1)
    results["embed_only_chunks_per_s"] = round(report.chunks / report.embed_seconds, 1)
    results["tokens_per_chunk"] = round(tokens, 1)
    print(
        f"ingest: {chunks} chunks in {seconds:.1f} s = {chunks / seconds:.1f} chunks/s "
        f"(embedding alone {results['embed_only_chunks_per_s']}/s; {tokens:.0f} tokens/chunk)",
        flush=True,
    )

    # baseline: plain fp32, batch 32, length-sorted as SentenceTransformer.encode does
    plain = Embedder(default_embedding_model_dir(), batch_size=32)
    sample = texts[: min(len(texts), 256 if args.quick else 512)]
    started = time.perf_counter()
    reference = encode_like_sentence_transformers(plain, sample)
    base_rate = len(sample) / (time.perf_counter() - started)
    ours = backend.embed(sample)
    cosines = np.sum(reference * ours, axis=1)
    results["baseline_fp32_chunks_per_s"] = round(base_rate, 1)
    results["ingest_ratio_vs_fp32"] = round(results["embed_only_chunks_per_s"] / base_rate, 2)
    results["parity_min_cosine"] = round(float(cosines.min()), 6)
    qvec_ours = backend.embed(questions[:100])
    qvec_ref = encode_like_sentence_transformers(plain, questions[:100])
    overlap = []
    for a, b in zip(qvec_ours, qvec_ref, strict=True):
        top_a = set(np.argsort(-(ours @ a))[:5])
        top_b = set(np.argsort(-(reference @ b))[:5])
        overlap.append(len(top_a & top_b) / 5)
    results["parity_top5_overlap"] = round(float(np.mean(overlap)), 4)
    print(
        f"baseline fp32, length-sorted batches of 32: {base_rate:.1f} chunks/s; ours/baseline "
        f"{results['ingest_ratio_vs_fp32']}x; parity: min cosine "
        f"{results['parity_min_cosine']}, top-5 overlap {results['parity_top5_overlap']}",
        flush=True,
    )

    # (b) latency at 1k, then 10k chunks
    picks = random.Random(1).sample(questions, min(args.queries, len(questions)))
    results["retrieval_1k"] = {"chunks": chunks, **latency(coll, backend, picks)}
    print(f"retrieval at {chunks} chunks: {results['retrieval_1k']}", flush=True)
    if not args.quick:
        # about 10k chunks: the whole corpus in 300-character chunks, a second time grouped
        # differently (other documents, other neighbours) if that is not enough
        large = work / "large"
        all_questions = write_corpus(large / "a", rows)
        if len(rows) < 9000:
            write_corpus(large / "b", rows[::-1], per_doc=17)
        big = index.create(home, "large", backend.identity, backend.dim, chunk_size=300, overlap=50)
        started = time.perf_counter()
        ingest(big, backend, [large])
        big_chunks = sum(d.chunks for d in big.documents())
        print(
            f"large index: {big_chunks} chunks in {time.perf_counter() - started:.0f} s", flush=True
        )
        picks = random.Random(2).sample(all_questions, min(args.queries, len(all_questions)))
        results["retrieval_10k"] = {"chunks": big_chunks, **latency(big, backend, picks)}
        print(f"retrieval at {big_chunks} chunks: {results['retrieval_10k']}", flush=True)

    # (c) answer metrics on the shipped evaluation set, with the baselines
    if not args.no_qa:
        from cuvee.docs import evaluate
        from cuvee.docs.evalset import EVALSET
        from cuvee.docs.generate import open_generator
        from cuvee.progress import SilentReporter

        settings = load_settings()
        qa_coll = index.create(home, "evalset", backend.identity, backend.dim)
        ingest(qa_coll, backend, [EVALSET / "docs"])
        items = evaluate.load_qa(EVALSET / "qa.jsonl")
        if args.quick:
            items = items[:6] + [i for i in items if not i.answerable][:2]
        name, generate, close = open_generator(settings, args.model, SilentReporter())
        try:
            metrics, per_question = evaluate.run(
                qa_coll, backend, items, generate, baselines=("plain", "extractive")
            )
        finally:
            close()
        answers_file = work / "answers.json"
        answers_file.write_text(json.dumps(per_question, ensure_ascii=False, indent=1))
        print(f"each question's answers: {answers_file}", flush=True)
        results["qa"] = {"model": name, **metrics}
        for split in metrics["cuvee"]:
            print(f"answers, {split} ({metrics['cuvee'][split]['questions']} questions, {name}):")
            for key in evaluate.HEADLINE:
                row = "  ".join(f"{s} {metrics[s][split].get(key)}" for s in metrics)
                print(f"  {key:<24} {row}")
        print(f"cuvee ask p50 {metrics['cuvee']['all']['ask_p50_s']} s a question", flush=True)

    results["machine"] = machine
    print(json.dumps(results))


if __name__ == "__main__":
    main()
