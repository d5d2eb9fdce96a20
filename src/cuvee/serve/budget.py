"""Budgets and cost per key: what each key spent, in tokens and money, on which model and target.

A key may carry budgets (``cuvee keys create --budget usd/month=20 --budget tokens/day=200000``):
tokens (prompt plus completion) or US dollars, per UTC day or calendar month. Every request a
keyed server answers is written to ``$CUVEE_HOME/usage.sqlite`` with its key, the model the
client named, the target that served it (a local model, or ``UPSTREAM/MODEL``), its tokens and
its cost (the upstream's ``price_per_million``; local models cost nothing but their tokens).
``cuvee keys usage`` reads that file.

Enforcement works on reservations, so concurrent requests cannot all slip under a budget at
once: at admission a request reserves what it may cost at most (an upper bound of its prompt's
tokens, its UTF-8 bytes, plus ``max_tokens`` for each choice, at the dearest price of the
targets that may serve it); it is admitted while the key's spend plus the reservations in flight
is below each budget; once it ends, the reservation is replaced by what it really cost. So the
spend can pass a budget by at most one reservation, the last one admitted. A budget reached
answers 429 with the code ``insufficient_quota``, as OpenAI does for a spent quota.

Spend is read from the file when a key's period is first needed, then kept in memory beside it:
a restart continues from the file, not from zero. Two servers sharing one ``CUVEE_HOME`` each
see the other's spend only when they next read it (at the next day or month), like the rate
limits, which are per process."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cuvee.errors import ConfigError
from cuvee.serve import errors

UNITS = ("tokens", "usd")
PERIODS = {"day": "%Y-%m-%d", "month": "%Y-%m"}
_SPEC = re.compile(r"^(tokens|usd)/(day|month)=([0-9]+(?:\.[0-9]+)?)$")
SCOPE_KEY = "cuvee_reservation"

# Tokens a chat message's wrapping (role, turn markers) may add to its text's bytes.
_PER_MESSAGE = 8


def parse_budgets(specs: Iterable[str]) -> dict[str, float]:
    """``["usd/month=20", "tokens/day=200000"]`` -> ``{"usd/month": 20.0, ...}``, or a
    ConfigError naming the bad one."""
    out: dict[str, float] = {}
    for spec in specs:
        match = _SPEC.match(spec.strip().replace(" ", ""))
        if match is None:
            raise ConfigError(
                f"--budget {spec!r}: write UNIT/PERIOD=AMOUNT",
                hint="UNIT tokens or usd, PERIOD day or month, e.g. --budget usd/month=20",
            )
        unit, period, amount = match.groups()
        value = float(amount)
        if value <= 0:
            raise ConfigError(f"--budget {spec!r}: the amount must be above 0")
        out[f"{unit}/{period}"] = int(value) if unit == "tokens" else value
    return out


def describe(budgets: dict[str, float]) -> str:
    """``{"usd/month": 20}`` -> ``$20 a month``."""
    parts = []
    for name, value in budgets.items():
        unit, period = name.split("/")
        parts.append(f"{_amount(unit, value)} a {period}")
    return ", ".join(parts)


def _amount(unit: str, value: float) -> str:
    return f"${value:,.4g}" if unit == "usd" else f"{int(value):,} tokens"


def since_day(since: str, now: datetime | None = None) -> str | None:
    """``today``/``month``/``all``/``YYYY-MM-DD`` -> the first day counted (None: all)."""
    now = now or datetime.now(UTC)
    if since == "all":
        return None
    if since == "today":
        return now.strftime(PERIODS["day"])
    if since == "month":
        return now.strftime("%Y-%m-01")
    try:
        return datetime.strptime(since, "%Y-%m-%d").strftime(PERIODS["day"])
    except ValueError:
        raise ConfigError(
            f"--since {since!r}: write today, month, all or a day as YYYY-MM-DD"
        ) from None


@dataclass
class Charge:
    tokens: int = 0
    usd: float = 0.0

    def get(self, unit: str) -> float:
        return self.tokens if unit == "tokens" else self.usd

    def add(self, other: Charge, sign: int = 1) -> None:
        self.tokens += sign * other.tokens
        self.usd += sign * other.usd


def estimate(
    body: dict[str, Any], max_tokens: int, prices: Iterable[tuple[float, float]]
) -> Charge:
    """The most a request may cost: its prompt's UTF-8 bytes (no tokenizer gives a token less
    than a byte, but for its few special tokens, counted per message) plus ``max_tokens`` for
    each choice, at the dearest of ``prices`` ((input, output) per million tokens)."""
    prompt = body.get("messages", body.get("prompt", body.get("input", "")))
    prompt_tokens = len(json.dumps(prompt, ensure_ascii=False).encode("utf-8"))
    if isinstance(prompt, list):
        prompt_tokens += _PER_MESSAGE * len(prompt)
    choices = body.get("n") if isinstance(body.get("n"), int) and body.get("n") > 0 else 1
    completion = max_tokens * choices
    usd = max((prompt_tokens * i + completion * o for i, o in prices), default=0.0) / 1e6
    return Charge(prompt_tokens + completion, usd)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    at TEXT NOT NULL,
    day TEXT NOT NULL,
    month TEXT NOT NULL,
    key_id TEXT,
    key_name TEXT,
    model TEXT,
    target TEXT,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    usd REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_key_day ON usage (key_id, day);
CREATE INDEX IF NOT EXISTS usage_key_month ON usage (key_id, month);
"""


@dataclass(frozen=True)
class Use:
    """What one target did for one request."""

    model: str | None  # as the client named it
    target: str | None  # who served: a local model, or UPSTREAM/MODEL
    prompt_tokens: int
    completion_tokens: int
    usd: float

    @property
    def charge(self) -> Charge:
        return Charge(self.prompt_tokens + self.completion_tokens, self.usd)


class Ledger:
    """``usage.sqlite``: one row per target per request."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def add(self, key_id: str | None, key_name: str | None, uses: list[Use], at: datetime):
        stamp = at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rows = [
            (stamp, at.strftime(PERIODS["day"]), at.strftime(PERIODS["month"]), key_id, key_name,
             u.model, u.target, u.prompt_tokens, u.completion_tokens, u.usd)
            for u in uses
        ]  # fmt: skip
        with self._lock:
            self._db().executemany("INSERT INTO usage VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def spent(self, key_id: str, period: str, value: str) -> Charge:
        column = {"day": "day", "month": "month"}[period]
        with self._lock:
            row = (
                self._db()
                .execute(
                    "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0), "
                    f"COALESCE(SUM(usd), 0) FROM usage WHERE key_id = ? AND {column} = ?",
                    (key_id, value),
                )
                .fetchone()
            )
        return Charge(int(row[0]), float(row[1]))

    def report(self, since: str | None = None) -> list[dict[str, Any]]:
        """Requests, tokens and cost per key, model and target, since the day ``since``
        (YYYY-MM-DD; None: all time)."""
        query = (
            "SELECT key_name, model, target, COUNT(*), SUM(prompt_tokens), "
            "SUM(completion_tokens), SUM(usd) FROM usage"
        )
        args: tuple = ()
        if since is not None:
            query += " WHERE day >= ?"
            args = (since,)
        query += " GROUP BY key_name, model, target ORDER BY key_name, SUM(usd) DESC, model"
        if not self.path.exists():
            return []
        with self._lock:
            rows = self._db().execute(query, args).fetchall()
        return [
            {"key": k, "model": m, "target": t, "requests": n, "prompt_tokens": p,
             "completion_tokens": c, "usd": round(u, 6)}
            for k, m, t, n, p, c, u in rows
        ]  # fmt: skip


@dataclass
class Reservation:
    """A request's hold on its key's budgets, and what its targets used."""

    key_id: str
    key_name: str
    held: Charge
    budgets: Budgets
    uses: list[Use] = field(default_factory=list)
    generation: Any = None  # a local generation, whose usage is read once it has ended
    model: str | None = None
    target: str | None = None
    settled: bool = False

    def record(self, use: Use) -> None:
        self.uses.append(use)

    def settle(self) -> None:
        self.budgets.settle(self)


class Budgets:
    """Admission against the budgets of keys, and the record of what was used."""

    def __init__(self, ledger: Ledger, clock: Callable[[], datetime] | None = None) -> None:
        self.ledger = ledger
        self._clock = clock or (lambda: datetime.now(UTC))
        self._spent: dict[tuple[str, str], tuple[str, Charge]] = {}
        self._held: dict[str, Charge] = {}
        self._lock = threading.Lock()

    def _period(self, key_id: str, period: str, now: datetime) -> Charge:
        value = now.strftime(PERIODS[period])
        cached = self._spent.get((key_id, period))
        if cached is None or cached[0] != value:
            cached = (value, self.ledger.spent(key_id, period, value))
            self._spent[(key_id, period)] = cached
        return cached[1]

    def admit(self, key, charge: Charge) -> Reservation:
        """Hold ``charge`` against ``key``'s budgets, or raise the 429 of the first budget its
        spend and the requests in flight have reached."""
        budgets: dict[str, float] = getattr(key, "budgets", None) or {}
        with self._lock:
            now = self._clock()
            held = self._held.setdefault(key.key_id, Charge())
            for name, limit in budgets.items():
                unit, period = name.split("/")
                spent = self._period(key.key_id, period, now)
                committed = spent.get(unit) + held.get(unit)
                if committed >= limit:
                    raise _spent(key.name, unit, period, limit, spent.get(unit), held.get(unit))
            held.add(charge)
        return Reservation(key.key_id, key.name, charge, self)

    def settle(self, reservation: Reservation) -> None:
        """Write what the request used, count it as spent and release its hold (once)."""
        with self._lock:
            if reservation.settled:
                return
            reservation.settled = True
            now = self._clock()
            uses = list(reservation.uses)
            generation = reservation.generation
            if generation is not None:
                usage = generation.usage()
                uses.append(
                    Use(reservation.model, reservation.target, usage["prompt_tokens"],
                        usage["completion_tokens"], 0.0)
                )  # fmt: skip
            self._held[reservation.key_id].add(reservation.held, -1)
            for period in PERIODS:
                spent = self._period(reservation.key_id, period, now)
                for use in uses:
                    spent.add(use.charge)
        if uses:
            self.ledger.add(reservation.key_id, reservation.key_name, uses, now)

    def held(self, key_id: str) -> Charge:
        with self._lock:
            return Charge(**vars(self._held.get(key_id, Charge())))

    def spent(self, key_id: str, period: str) -> Charge:
        with self._lock:
            return Charge(**vars(self._period(key_id, period, self._clock())))


def _spent(name: str, unit: str, period: str, limit: float, used: float, held: float):
    resets = "at 00:00 UTC" if period == "day" else "on the 1st of next month, 00:00 UTC"
    in_flight = f", {_amount(unit, held)} held by requests in flight" if held else ""
    return errors.APIError(
        429,
        f"Budget reached for key '{name}': {_amount(unit, limit)} a {period}, "
        f"{_amount(unit, used)} used{in_flight}. It resets {resets}.",
        type="insufficient_quota",
        code="insufficient_quota",
    )


def reservation_of(scope: dict) -> Reservation | None:
    return scope.get(SCOPE_KEY)


def charged(request: Any, use: Use) -> None:
    """Record what a target did for the request, on its reservation (if it has one)."""
    reservation = request.scope.get(SCOPE_KEY)
    if reservation is not None:
        reservation.record(use)


class SettleMiddleware:
    """Settles a request's reservation once its response has ended (the last byte of a
    stream sent, or the client gone), whatever the route did in between."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            reservation = scope.get(SCOPE_KEY)
            if reservation is not None:
                reservation.settle()
