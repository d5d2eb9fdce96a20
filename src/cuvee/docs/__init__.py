"""Grounded answers from private documents.

The flow, one module per step:

- ``loaders``: a file (.txt, .md, .html, .pdf, .docx) -> plain text plus its headings;
- ``chunking``: text -> chunks that follow headings and paragraphs, with overlap and offsets;
- ``textnorm``: the one normalisation (case, accents, French elisions) used for BM25 and checks;
- ``embedders``: a registry of sentence-embedding backends (local directory, OpenAI endpoint);
- ``index``: one SQLite file per collection (documents, chunks, FTS5, vectors);
- ``retrieval``: BM25 and vector search fused by reciprocal rank, optional reranker;
- ``verify``: every answer sentence checked against the chunk it cites, quotes taken verbatim;
- ``answer``: retrieve -> generate -> verify -> an answer or an explicit abstention;
- ``evaluate``: retrieval, answer, citation and abstention metrics over a QA file.
"""
