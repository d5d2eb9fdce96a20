"""Grounded answers from private documents.

The flow, one module per step:

- ``loaders``: a file (.txt, .md, .html, .pdf, .docx) -> plain text plus its headings;
- ``chunking``: text -> chunks that follow headings and paragraphs, with overlap and offsets;
- ``textnorm``: the one normalisation (case, accents, French elisions) used for BM25 and checks;
- ``embedders``: a registry of sentence-embedding backends (local directory, OpenAI endpoint);
- ``index``: one SQLite file per collection (documents, chunks, FTS5, vectors);
- ``retrieval``: BM25 and vector search fused by reciprocal rank, optional reranker;
- ``extract``: the windows of the retrieved chunks that answer a question, and whether any does;
- ``verify``: every answer sentence checked against the chunk it cites, quotes taken verbatim;
- ``answer``: open a collection for answering; retrieve -> extract -> generate -> verify -> an
  answer (the model's, or the best window quoted) or an explicit abstention, in the question's
  language; the CLI, the server's ``rag:`` models and the ``grounded`` eval suite all use it;
- ``baselines``: the plain (unchecked model) and extractive (no model) answers it is measured
  against;
- ``evaluate``: answer, abstention, citation and retrieval metrics over a QA file, per split;
- ``evalset``: the shipped evaluation set (20 documents, 205 questions, dev and held-out).
"""
