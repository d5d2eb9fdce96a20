"""Budgets and cost per key (serve.budget): reservations at admission so concurrent requests
cannot overshoot a budget by more than one reservation, settlement from real usage, the ledger
in usage.sqlite that outlives a restart, and `cuvee keys budget` / `cuvee keys usage`."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cuvee.cli import cli
from cuvee.errors import ConfigError
from cuvee.serve.budget import Budgets, Charge, Ledger, Use, estimate, parse_budgets, since_day
from cuvee.serve.keys import KeyStore
from helpers import run_cli
from test_gateway import config_of, events_of, gateway_app, upstreams  # noqa: F401
from test_serve import assert_error, make_app

PRICE = {"input": 1000.0, "output": 2000.0}  # USD per million tokens: 0.001 / 0.002 a token


def test_budgets_are_parsed_and_bad_ones_named() -> None:
    assert parse_budgets(["usd/month=20", "tokens/day=1000"]) == {
        "usd/month": 20.0,
        "tokens/day": 1000,
    }
    for bad in ("usd/week=2", "euros/day=1", "tokens/day", "tokens/day=0", "usd/month=-1"):
        with pytest.raises(ConfigError, match="--budget"):
            parse_budgets([bad])
    assert since_day("month", datetime(2026, 3, 17, tzinfo=UTC)) == "2026-03-01"
    assert since_day("all") is None
    with pytest.raises(ConfigError, match="--since"):
        since_day("yesterday")


def test_a_reservation_bounds_what_the_request_can_use() -> None:
    body = {"messages": [{"role": "user", "content": "héllo wörld"}], "n": 2}
    charge = estimate(body, 100, [(0.0, 0.0), (1.0, 3.0)])
    # every byte of the prompt (a token is at least a byte), 8 a message, and 2 x 100 out
    prompt = len(json.dumps(body["messages"], ensure_ascii=False).encode()) + 8
    assert charge.tokens == prompt + 200
    assert charge.usd == pytest.approx((prompt * 1.0 + 200 * 3.0) / 1e6)  # the dearest target


class _Key:
    def __init__(self, budgets: dict) -> None:
        self.key_id, self.name, self.budgets = "k1", "team", budgets


@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=5000),
    reservations=st.lists(st.integers(min_value=1, max_value=400), min_size=64, max_size=64),
    used_share=st.lists(st.floats(min_value=0, max_value=1), min_size=64, max_size=64),
)
def test_64_concurrent_requests_never_overshoot_by_more_than_one_reservation(
    tmp_path_factory, limit: int, reservations: list[int], used_share: list[float]
) -> None:
    ledger = Ledger(tmp_path_factory.mktemp("ledger") / "usage.sqlite")
    budgets = Budgets(ledger)
    key = _Key({"tokens/day": limit})
    start = threading.Barrier(64)
    admitted: list[int] = []

    def request(i: int) -> None:
        start.wait()  # all 64 arrive together
        try:
            held = budgets.admit(key, Charge(reservations[i], 0.0))
        except Exception as exc:
            assert getattr(exc, "code", None) == "insufficient_quota"
            return
        used = int(reservations[i] * used_share[i])  # settled from real use, <= reserved
        held.record(Use("m", "m", used // 2, used - used // 2, 0.0))
        held.settle()
        admitted.append(used)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent = budgets.spent("k1", "day").tokens
    assert spent == sum(admitted)
    assert spent <= limit + max(reservations)
    assert budgets.held("k1") == Charge(0, 0.0)  # every hold released
    # the file says the same, and a restarted server starts from it, not from zero
    again = Budgets(Ledger(ledger.path))
    assert again.spent("k1", "day").tokens == spent
    if spent >= limit:
        with pytest.raises(Exception, match="Budget reached"):
            again.admit(key, Charge(1, 0.0))
    ledger.close()


def ask(client, auth: dict, model: str, stream: bool = False, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], **extra}
    return client.post("/v1/chat/completions", json={**body, "stream": stream}, headers=auth)


def _keyed(tmp_path: Path, *budget: str):
    store = KeyStore(tmp_path / "keys.sqlite")
    _, secret = store.create("team", budgets=parse_budgets(budget) if budget else None)
    return store, {"Authorization": f"Bearer {secret}"}


def test_a_local_models_token_budget_refuses_once_spent_with_openais_quota_error(
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient

    store, auth = _keyed(tmp_path, "tokens/day=60")
    app, _ = make_app(keys=store)
    body = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5}
    with TestClient(app) as client:
        answered = 0
        while True:
            r = client.post("/v1/chat/completions", json=body, headers=auth)
            if r.status_code != 200:
                break
            answered += 1
            assert answered < 100, "the budget never stopped the key"
        error = assert_error(r, 429, code="insufficient_quota")
        assert "Budget reached for key 'team'" in error["message"] and "a day" in error["message"]
    rows = Ledger(tmp_path / "usage.sqlite").report()
    assert [(r["key"], r["model"], r["target"], r["requests"]) for r in rows] == [
        ("team", "fake", "fake", answered)
    ]
    tokens = rows[0]["prompt_tokens"] + rows[0]["completion_tokens"]
    assert tokens >= 60 and rows[0]["usd"] == 0.0  # refused only once spent; local is free


def test_upstream_cost_is_settled_from_its_usage_per_target(upstreams, tmp_path) -> None:  # noqa: F811
    from fastapi.testclient import TestClient

    store, auth = _keyed(tmp_path)
    config = config_of(
        upstreams,
        {"assistant": {"targets": ["down/m", "a/m", "fake"]}},
        a={"price_per_million": PRICE},
    )
    app, _ = gateway_app(config, keys=store)
    with TestClient(app) as client:
        whole = ask(client, auth, "assistant")
        assert whole.status_code == 200 and whole.json()["cuvee"]["served_by"] == "a/m"
        streamed = ask(client, auth, "assistant", stream=True)
        events = events_of(streamed)
        # cuvee asked the upstream for a usage chunk; the client, who did not, gets none
        assert not any(isinstance(e, dict) and e.get("usage") for e in events)
        assert upstreams["a"][0].seen[-1]["stream_options"] == {"include_usage": True}
        with_usage = ask(
            client, auth, "assistant", stream=True, stream_options={"include_usage": True}
        )
        assert [e["usage"] for e in events_of(with_usage) if isinstance(e, dict) and e.get("usage")]
    rows = Ledger(tmp_path / "usage.sqlite").report()
    assert len(rows) == 1
    row = rows[0]
    assert (row["key"], row["model"], row["target"], row["requests"]) == (
        "team",
        "assistant",
        "a/m",
        3,
    )
    assert (row["prompt_tokens"], row["completion_tokens"]) == (9, 18)  # the fake's usage x 3
    assert row["usd"] == pytest.approx((9 * 1000 + 18 * 2000) / 1e6)


def test_64_concurrent_gateway_requests_stay_within_one_reservation_of_a_money_budget(
    upstreams,  # noqa: F811
    tmp_path,
) -> None:
    # each request reserves (prompt bytes + 8) x 0.001 + 10 x 0.002 USD and costs 0.027
    store, auth = _keyed(tmp_path, "usd/day=0.5")
    config = config_of(upstreams, {}, a={"price_per_million": PRICE})
    app, _ = gateway_app(config, keys=store)
    body = {"model": "a/m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10}
    one = estimate(body, 10, [(PRICE["input"], PRICE["output"])]).usd

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            calls = [
                client.post("/v1/chat/completions", json=body, headers=auth) for _ in range(64)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    statuses = asyncio.run(run())
    assert set(statuses) == {200, 429} and statuses.count(200) >= 1
    (row,) = Ledger(tmp_path / "usage.sqlite").report()
    assert row["requests"] == statuses.count(200)
    assert row["usd"] <= 0.5 + one
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "keys", "usage", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["usage"][0]["usd"] == pytest.approx(row["usd"])
    assert report["budgets"] == [
        {"key": "team", "budget": "usd/day", "limit": 0.5, "used": pytest.approx(row["usd"])}
    ]


def test_keys_budget_sets_and_clears_and_names_bad_input(tmp_path: Path, capsys) -> None:
    home = ["--home", str(tmp_path)]
    code, out, _ = run_cli(
        capsys, *home, "keys", "create", "--name", "ops", "--budget", "usd/month=20", "--json"
    )
    assert code == 0 and json.loads(out)["budgets"] == {"usd/month": 20.0}
    code, out, _ = run_cli(capsys, *home, "keys", "budget", "ops", "--budget", "tokens/day=500")
    assert code == 0 and "500 tokens a day" in out
    code, out, _ = run_cli(capsys, *home, "keys", "list", "--json")
    assert json.loads(out)[0]["budgets"] == {"tokens/day": 500}
    code, out, _ = run_cli(capsys, *home, "keys", "budget", "ops", "--none")
    assert code == 0 and "no budget" in out
    code, _, err = run_cli(capsys, *home, "keys", "budget", "ops", "--budget", "usd/week=1")
    assert code != 0 and "UNIT/PERIOD=AMOUNT" in err
    code, _, err = run_cli(capsys, *home, "keys", "budget", "nobody", "--none")
    assert code != 0 and "no active key named 'nobody'" in err
    code, _, err = run_cli(capsys, *home, "keys", "usage", "--since", "yesterday")
    assert code != 0 and "--since 'yesterday'" in err
