"""`cuvee eval` end to end: a tiny base and its fine-tune from the store (llama.cpp engine) and an
OpenAI-compatible endpoint served in-process, on every suite; JSON, the HTML report, the cache,
and clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import run_cli, store_tiny, uvicorn_in_thread, write_data

pytest.importorskip("llama_cpp")


def _segment(text: str, name: str) -> str:
    return text.split(f"[{name}]\n")[1].split(f"\n[End of {name.lower()}]")[0]


def fake_openai(calls: list[dict]):
    """An OpenAI-compatible chat endpoint with two models: ``fake`` answers every prompt with a
    fixed line; ``judge`` scores 9 for answers from ``fake`` and 3 otherwise, plus 1 for
    whichever answer it reads first (a position bias the eval must cancel)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        calls.append(body)
        prompt = body["messages"][-1]["content"]
        if body["model"] == "fake":
            reply = "ENDPOINT: hello world."
        elif body["model"] == "judge":
            first, second = _segment(prompt, "Answer 1"), _segment(prompt, "Answer 2")
            s1 = (9 if "ENDPOINT" in first else 3) + 1
            s2 = 9 if "ENDPOINT" in second else 3
            reply = f"{s1} {s2}\nThe first answer is longer."
        else:
            return JSONResponse({"error": {"message": "model not found"}}, status_code=404)
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop",
                }
            ],
        }

    return app


@pytest.fixture
def base_and_tuned(tiny_spm_gemma_dir: Path, tmp_path: Path):
    """``tg``, a tiny Gemma 3 llama.cpp can run, and ``tuned``, a LoRA fine-tune of it whose run
    log has training and held-out losses."""
    from cuvee.train.loop import train
    from cuvee.train.recipe import Recipe

    settings, store = store_tiny(tiny_spm_gemma_dir, name="tg")
    data = write_data(tmp_path / "train.jsonl", n=40)
    recipe = Recipe(
        base="tg",
        data=[str(data)],
        name="tuned",
        seq_len=48,
        batch_size=2,
        lr=0.01,
        max_steps=4,
        eval_every=2,
        save_every=100,
        precision="fp32",
    )
    train(settings, recipe)
    return settings, store


def test_two_store_models_and_an_endpoint_on_every_suite(
    base_and_tuned, capsys, tmp_path: Path, monkeypatch
) -> None:
    calls: list[dict] = []
    report = tmp_path / "report.html"
    with uvicorn_in_thread(fake_openai(calls)) as root:
        endpoint = f"openai:{root}/v1#fake"
        args = [
            "eval",
            "tg",
            "tuned",
            endpoint,
            "--suite",
            "instructions",
            "--suite",
            "tasks",
            "--suite",
            "pairwise",
            "--judge",
            f"openai:{root}/v1#judge",
            "--limit",
            "3",
            "--max-tokens",
            "6",
        ]
        code, out, err = run_cli(capsys, *args, "--json", "--report", str(report))
        assert code == 0, err
        doc = json.loads(out.strip().splitlines()[-1])  # one JSON object, the last line

        # what ran is recorded: hashes, template, settings, suite versions
        assert set(doc["models"]) == {"tg", "tuned", endpoint}
        tg, tuned = doc["models"]["tg"], doc["models"]["tuned"]
        assert re.fullmatch(r"[0-9a-f]{64}", tg["sha256"]) and tg["sha256"] != tuned["sha256"]
        assert tg["template"] == "gemma" and tuned["parent"] == "tg"
        assert doc["models"][endpoint] == {
            "backend": "openai",
            "base_url": f"{root}/v1",
            "model": "fake",
        }
        for label in ("instructions", "tasks", "pairwise"):
            suite = doc["suites"][label]
            assert suite["version"] and re.fullmatch(r"[0-9a-f]{64}", suite["sha256"])
            assert suite["items"] == 3 and suite["max_tokens"] == 6
            assert suite["temperature"] == 0.0 and suite["seed"] == 0
        assert doc["suites"]["pairwise"]["reference"] == "tg"
        assert doc["suites"]["pairwise"]["judge"]["model"] == "judge"

        # per model, per suite, per metric
        for model in doc["models"]:
            metrics = doc["results"][model]["instructions"]["metrics"]
            assert set(metrics) == {
                "prompt_strict",
                "prompt_loose",
                "instruction_strict",
                "instruction_loose",
            }
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
            assert doc["results"][model]["instructions"]["counts"]["checker_errors"] == 0
            tasks = doc["results"][model]["tasks"]["metrics"]
            assert {"summary_rouge_l", "class_accuracy", "extract_valid_json"} <= set(tasks)
        # the endpoint's fixed answer is all capitals at its start, so lowercase fails; what
        # matters is that its figures come from its answers, not the store models'
        fake_pairs = doc["results"][endpoint]["pairwise"]
        assert fake_pairs["metrics"]["win"] == 1.0
        assert fake_pairs["metrics"]["relative_score"] == pytest.approx(19 / 7)
        assert fake_pairs["counts"]["judge_errors"] == 0
        tuned_pairs = doc["results"]["tuned"]["pairwise"]["metrics"]
        # the judge favours answer 1 by a point; judged both ways, tuned vs tg is even
        assert tuned_pairs["tie"] == 1.0 and tuned_pairs["relative_score"] == 1.0
        assert (
            "pairwise" not in doc["results"]["tg"]
            or not doc["results"]["tg"]["pairwise"]["metrics"]
        )

        generations = [c for c in calls if c["model"] == "fake"]
        judgements = [c for c in calls if c["model"] == "judge"]
        assert len(generations) == 9  # 3 items x 3 suites
        assert len(judgements) == 2 * 2 * 3  # 2 models vs tg, 3 prompts, both orders
        assert all(c["temperature"] == 0.0 and c["max_tokens"] == 6 for c in generations)
        assert doc["generated"] == 3 * 9 + 12  # answers and judgements

        # the report: one self-contained file with tables, bars and the loss curves
        html = report.read_text(encoding="utf-8")
        assert html.startswith("<!doctype html>")
        assert html.count("<svg") >= 4  # bars for 3 suites + tuned's loss curves
        assert "<table>" in html and "prompt_strict" in html and "relative_score" in html
        assert "train loss" in html and "held-out loss" in html and "<polyline" in html
        assert "fine-tuned from <code>tg</code>, which is in this comparison" in html
        assert not re.search(r"<script|<link|<img|src=|url\(", html)

        # a re-run is instant: nothing is generated, no engine opened, no request sent
        import cuvee.engine

        def no_engine(*a, **k):
            raise AssertionError("the engine was opened on a cached re-run")

        monkeypatch.setattr(cuvee.engine, "open_engine", no_engine)
        before = len(calls)
        code, out2, err = run_cli(capsys, *args, "--json")
        assert code == 0, err
        again = json.loads(out2.strip().splitlines()[-1])
        assert again["generated"] == 0 and len(calls) == before
        assert again["results"] == {
            m: {s: {**e, "counts": {**e["counts"], "cached": 1}} for s, e in by.items()}
            for m, by in doc["results"].items()
        }
        # changing a setting misses the cache
        code, out3, err = run_cli(capsys, "eval", endpoint, "--suite", "tasks", "--limit", "2")
        assert code == 0, err
        assert len(calls) == before + 2 and "2 answers generated" in out3


def test_human_output_is_a_table_per_suite(base_and_tuned, capsys) -> None:
    code, out, err = run_cli(capsys, "eval", "tg", "--suite", "tasks", "--limit", "4")
    assert code == 0, err
    assert "tasks (v1, 4 items)" in out and "qa_contains" in out and "answers generated" in out
    assert "tg · tasks" in err  # the progress bar


def test_cached_answers_name_the_suite_file_they_answer(
    base_and_tuned, capsys, tmp_path, isolated_home
) -> None:
    from cuvee.eval.suites import fixture_path

    mine = tmp_path / "my-tasks.jsonl"
    # the fixture's first records: other bytes, so another cache entry than the fixture's
    mine.write_text("".join(fixture_path("tasks").read_text().splitlines(True)[:3]))
    code, _, err = run_cli(
        capsys, "eval", "tg", "--suite", f"tasks={mine}", "--suite", "tasks", "--limit", "2"
    )
    assert code == 0, err
    entries = [json.loads(p.read_text()) for p in (isolated_home / "eval" / "cache").glob("*.json")]
    assert sorted(map(str, (e["suite_file"] for e in entries))) == sorted([str(mine), "None"])
    assert all(len(e["outputs"]) == 2 and e["ids"] for e in entries)


def test_unknown_models_suites_and_bad_files_fail_before_generating(capsys, tmp_path) -> None:
    code, _, err = run_cli(capsys, "eval", "nope", "--suite", "tasks")
    assert code == 1 and "no model named 'nope'" in err
    code, _, err = run_cli(capsys, "eval", "ftp:x", "--suite", "tasks")
    assert code == 1 and "unknown model 'ftp:x'" in err
    code, _, err = run_cli(capsys, "eval", "openai:localhost#m", "--suite", "tasks")
    assert code == 1 and "openai:BASE_URL#MODEL_ID" in err
    code, _, err = run_cli(capsys, "eval", "nope", "--suite", "nosuch")
    assert code == 1 and "unknown suite 'nosuch'" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "closed_qa", "prompt": "q", "answers": ["a"]}\n{"task": 1}\n')
    code, _, err = run_cli(capsys, "eval", "nope", "--suite", str(bad))
    assert code == 1 and f"{bad}:2" in err and "'task' must be a str" in err
    code, _, err = run_cli(capsys, "eval", "a1", "--suite", "pairwise")
    assert code == 1 and "compares models: give at least two" in err
    code, _, err = run_cli(capsys, "eval", "a1", "a2", "--suite", "pairwise")
    assert code == 1 and "--judge" in err


def test_an_endpoint_that_refuses_is_named(capsys) -> None:
    calls: list[dict] = []
    with uvicorn_in_thread(fake_openai(calls)) as root:
        spec = f"openai:{root}/v1#missing"
        code, _, err = run_cli(capsys, "eval", spec, "--suite", "tasks", "--limit", "1")
    assert code == 1 and spec in err and "404" in err and "model not found" in err
