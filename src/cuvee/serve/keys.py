"""API keys: created by `cuvee keys create`, stored hashed in ``$CUVEE_HOME/keys.sqlite``, and
checked on every /v1 request once at least one exists.

A key reads ``cv-<id>-<secret>``. The id (12 hex characters) finds the row; only the sha256 of
the whole key is stored, compared with ``hmac.compare_digest``, so neither the file nor the
timing of a refusal gives a key away. The secret is shown once, at creation.

Each key may carry limits: requests per minute, tokens (prompt plus completion) per minute,
the models it may use and the document collections it may see (``rag:NAME``, ``collection``,
``/v1/retrieve``). Limits are counted in memory over a sliding minute, per server process.

A key may also be an admin key (``--admin``): the web UI's training and key screens need one
(or a server with no keys, asked from loopback).

The collections and admin columns were added after the first keys files were written: opening a
file without them adds them (``ALTER TABLE ... ADD COLUMN``, a NULL meaning "every collection"
and "not an admin"), so an existing keys file keeps working, its keys as they were, and an older
cuvee still reads the file (it names the columns it selects)."""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cuvee.errors import ConfigError, CuveeError
from cuvee.serve import errors
from cuvee.serve.budget import SCOPE_KEY, Budgets, Charge, Ledger

PREFIX = "cv-"
_ID_LEN = 12
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
WINDOW_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    rpm INTEGER,
    tpm INTEGER,
    models TEXT,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS keys_active_name ON keys (name) WHERE revoked_at IS NULL;
"""

# Columns added since the first schema: name -> type. Each is added where missing, NULL in rows
# written before it (which therefore keep their old meaning).
_ADDED_COLUMNS = {"collections": "TEXT", "admin": "INTEGER", "budgets": "TEXT"}

_COLUMNS = "key_id, name, rpm, tpm, models, created_at, revoked_at, collections, admin, budgets"


@dataclass(frozen=True)
class ApiKey:
    """A key's record, without its secret (which is never stored)."""

    key_id: str
    name: str
    rpm: int | None
    tpm: int | None
    models: tuple[str, ...] | None  # None: every model
    created_at: str
    revoked_at: str | None = None
    # None: every collection for an unrestricted key, none for a key limited to some models
    collections: tuple[str, ...] | None = None
    # may manage the server from the web UI: start and stop training runs, create and revoke
    # keys (NULL in files written before the column: no)
    admin: bool = False
    # spending limits, "UNIT/PERIOD" -> amount (tokens or usd, a day or a month; see
    # serve.budget); None: no budget
    budgets: dict[str, float] | None = None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def sees(self, collection: str) -> bool:
        """Whether the key may search ``collection`` and read its chunks. A key limited to
        some models (``--models``) but given no ``--collections`` sees none: document access
        is granted explicitly, never as a side effect (keys made before collections existed
        were made for models alone)."""
        if self.collections is None:
            return self.models is None
        return collection in self.collections

    def public(self) -> dict:
        return {
            "name": self.name,
            "id": f"{PREFIX}{self.key_id}",
            "rpm": self.rpm,
            "tpm": self.tpm,
            "models": list(self.models) if self.models is not None else None,
            "collections": list(self.collections) if self.collections is not None else None,
            "admin": self.admin,
            "budgets": dict(self.budgets) if self.budgets else None,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address to bind, or a client's address) is this machine only. A
    name other than localhost may resolve to any interface, so it counts as exposed; an IPv6
    form of an IPv4 loopback address (``::ffff:127.0.0.1``) counts as loopback."""
    if host.strip().lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _now() -> str:
    from cuvee.store import utc_now

    return utc_now()


class KeyStore:
    """The keys file. One connection, guarded by a lock: the server checks keys from its event
    loop and from worker threads, and sees keys created or revoked while it runs."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._active: tuple[tuple[int, int], bool] | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.executescript(_SCHEMA)
            _migrate(conn)
            if new:
                self.path.chmod(0o600)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def create(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        models: Iterable[str] | None = None,
        collections: Iterable[str] | None = None,
        admin: bool = False,
        budgets: dict[str, float] | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its secret (to show once)."""
        if not _NAME.match(name):
            raise ConfigError(
                f"invalid key name {name!r}",
                hint="1-64 characters: letters, digits, '.', '_', '@' or '-'",
            )
        for label, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 1:
                raise ConfigError(f"--{label} must be at least 1 (leave it out for no limit)")
        model_list = None
        if models is not None:
            model_list = tuple(dict.fromkeys(m.strip() for m in models if m.strip()))
            if not model_list:
                raise ConfigError("--models names no model", hint="e.g. --models demo,base")
        collection_list = None
        if collections is not None:
            collection_list = tuple(dict.fromkeys(c.strip() for c in collections if c.strip()))
            if not collection_list:
                raise ConfigError(
                    "--collections names no collection", hint="e.g. --collections handbook,faq"
                )
            from cuvee.docs.index import check_name

            for name_ in collection_list:
                try:
                    check_name(name_)
                except CuveeError as exc:
                    raise ConfigError(f"--collections: {exc.message}") from exc
        key_id = secrets.token_hex(_ID_LEN // 2)
        secret = f"{PREFIX}{key_id}-{secrets.token_urlsafe(32)}"
        record = ApiKey(
            key_id,
            name,
            rpm,
            tpm,
            model_list,
            _now(),
            None,
            collection_list,
            bool(admin),
            dict(budgets) if budgets else None,
        )
        with self._lock:
            db = self._db()
            try:
                db.execute(
                    "INSERT INTO keys (key_id, name, sha256, rpm, tpm, models, created_at, "
                    "collections, admin, budgets) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key_id,
                        name,
                        digest(secret),
                        rpm,
                        tpm,
                        _json_list(model_list),
                        record.created_at,
                        _json_list(collection_list),
                        int(bool(admin)),
                        json.dumps(record.budgets) if record.budgets else None,
                    ),
                )
            except sqlite3.IntegrityError:
                raise ConfigError(
                    f"a key named {name!r} already exists",
                    hint=f"revoke it first (`cuvee keys revoke {name}`) or choose another name",
                ) from None
        return record, secret

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        query = f"SELECT {_COLUMNS} FROM keys"
        if not include_revoked:
            query += " WHERE revoked_at IS NULL"
        with self._lock:
            rows = self._db().execute(query + " ORDER BY created_at, name").fetchall()
        return [_record(row) for row in rows]

    def revoke(self, name: str) -> ApiKey:
        """Revoke the active key ``name``; it stops working at the next request."""
        with self._lock:
            db = self._db()
            row = db.execute(
                f"SELECT {_COLUMNS} FROM keys WHERE name = ? AND revoked_at IS NULL",
                (name,),
            ).fetchone()
            if row is None:
                names = [r[0] for r in db.execute("SELECT name FROM keys WHERE revoked_at IS NULL")]
                hint = f"active keys: {', '.join(names)}" if names else "there are no active keys"
                raise ConfigError(f"no active key named {name!r}", hint=hint)
            now = _now()
            db.execute("UPDATE keys SET revoked_at = ? WHERE key_id = ?", (now, row[0]))
        return _record((*row[:6], now, *row[7:]))

    def set_budgets(self, name: str, budgets: dict[str, float] | None) -> ApiKey:
        """Replace the budgets of the active key ``name`` (None or empty: no budget); a
        running server applies them from the key's next request."""
        with self._lock:
            db = self._db()
            row = db.execute(
                f"SELECT {_COLUMNS} FROM keys WHERE name = ? AND revoked_at IS NULL", (name,)
            ).fetchone()
            if row is None:
                raise ConfigError(f"no active key named {name!r}", hint="see `cuvee keys list`")
            stored = json.dumps(budgets) if budgets else None
            db.execute("UPDATE keys SET budgets = ? WHERE key_id = ?", (stored, row[0]))
        return _record((*row[:9], stored))

    def has_active(self) -> bool:
        """Whether any key is active. Asked on every request, so the answer is kept until the
        file changes (its size or modification time; a key created or revoked by the CLI
        changes both)."""
        try:
            stat = self.path.stat()
            version = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            version = None
        cached = self._active
        if version is not None and cached is not None and cached[0] == version:
            return cached[1]
        with self._lock:
            row = (
                self._db()
                .execute("SELECT EXISTS (SELECT 1 FROM keys WHERE revoked_at IS NULL)")
                .fetchone()
            )
        self._active = (version, bool(row[0])) if version is not None else None
        return bool(row[0])

    def verify(self, presented: str) -> ApiKey | None:
        """The active key whose secret is ``presented``, or None."""
        key_id = presented[len(PREFIX) : len(PREFIX) + _ID_LEN]
        well_formed = presented.startswith(PREFIX) and presented[len(PREFIX) + _ID_LEN :][:1] == "-"
        row = None
        if well_formed:
            with self._lock:
                row = (
                    self._db()
                    .execute(
                        f"SELECT {_COLUMNS}, sha256 FROM keys "
                        "WHERE key_id = ? AND revoked_at IS NULL",
                        (key_id,),
                    )
                    .fetchone()
                )
        # compare even when there is no row, so a refusal takes as long either way
        stored = row[10] if row is not None else "0" * 64
        matches = hmac.compare_digest(stored, digest(presented))
        return _record(row[:10]) if row is not None and matches else None


def _migrate(conn: sqlite3.Connection) -> None:
    """Add the columns a keys file written by an earlier cuvee lacks. Two processes may race
    to add one: the loser's "duplicate column" is the outcome it wanted."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(keys)")}
    for column, kind in _ADDED_COLUMNS.items():
        if column not in have:
            try:
                conn.execute(f"ALTER TABLE keys ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise


def _json_list(values: tuple[str, ...] | None) -> str | None:
    return json.dumps(list(values)) if values is not None else None


def _tuple(stored: str | None) -> tuple[str, ...] | None:
    return tuple(json.loads(stored)) if stored is not None else None


def _record(row: tuple) -> ApiKey:
    key_id, name, rpm, tpm, models, created_at, revoked_at, collections, admin, budgets = row
    return ApiKey(
        key_id=key_id,
        name=name,
        rpm=rpm,
        tpm=tpm,
        models=_tuple(models),
        created_at=created_at,
        revoked_at=revoked_at,
        collections=_tuple(collections),
        admin=bool(admin),
        budgets=json.loads(budgets) if budgets else None,
    )


class RateLimiter:
    """Requests and tokens per key over a sliding minute. Tokens are counted when a request
    finishes, so a key is refused once the minute's tokens have reached its limit (a request
    in flight may take it past the limit; the next one waits)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, collections.deque[float]] = collections.defaultdict(
            collections.deque
        )
        self._tokens: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(
            collections.deque
        )
        self._lock = threading.Lock()

    def admit(self, key: ApiKey) -> None:
        """Count one request for ``key``, or raise the 429 saying when to retry."""
        with self._lock:
            now = self._clock()
            requests = self._requests[key.key_id]
            tokens = self._tokens[key.key_id]
            while requests and requests[0] <= now - WINDOW_S:
                requests.popleft()
            while tokens and tokens[0][0] <= now - WINDOW_S:
                tokens.popleft()
            if key.rpm is not None and len(requests) >= key.rpm:
                wait = requests[len(requests) - key.rpm] + WINDOW_S - now
                raise errors.rate_limited(
                    f"Rate limit reached for key '{key.name}' on requests per min (RPM): "
                    f"Limit {key.rpm}, Used {len(requests)}, Requested 1.",
                    wait,
                )
            used = sum(n for _, n in tokens)
            if key.tpm is not None and used >= key.tpm:
                wait, left = 0.0, used
                for at, n in tokens:  # oldest first: when does the minute fall under the limit?
                    left -= n
                    wait = at + WINDOW_S - now
                    if left < key.tpm:
                        break
                raise errors.rate_limited(
                    f"Rate limit reached for key '{key.name}' on tokens per min (TPM): "
                    f"Limit {key.tpm}, Used {used}.",
                    wait,
                )
            requests.append(now)

    def add_tokens(self, key: ApiKey, n: int) -> None:
        if n > 0 and key.tpm is not None:
            with self._lock:
                self._tokens[key.key_id].append((self._clock(), n))


class Authenticator:
    """Who a request is: None when no key exists (the server is open, which the CLI allows on
    loopback only), else the key its ``Authorization: Bearer`` header carries."""

    def __init__(
        self,
        store: KeyStore | None,
        limiter: RateLimiter | None = None,
        budgets: Budgets | None = None,
    ) -> None:
        self.store = store
        self.limiter = limiter or RateLimiter()
        if budgets is None and store is not None:
            budgets = Budgets(Ledger(store.path.with_name("usage.sqlite")))
        self.budgets = budgets

    def admit(self, key: ApiKey, scope: dict, charge: Charge) -> None:
        """Admit one request of ``key``: its rate limits, then its budgets, whose reservation
        the request's scope keeps until the response has ended (``budget.SettleMiddleware``)."""
        self.limiter.admit(key)
        if self.budgets is not None and SCOPE_KEY not in scope:
            scope[SCOPE_KEY] = self.budgets.admit(key, charge)

    @property
    def enabled(self) -> bool:
        return self.store is not None and self.store.has_active()

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        if not self.enabled:
            return None
        assert self.store is not None
        if not authorization or not authorization.strip():
            raise errors.missing_key()
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.missing_key()
        key = self.store.verify(token.strip())
        if key is None:
            raise errors.wrong_key()
        return key
