"""The gateway's settings: upstreams and routes.

``serve.yaml`` (``cuvee serve --config serve.yaml``)::

    upstreams:
      hosted:
        base_url: https://api.example.com/v1
        api_key_env: EXAMPLE_API_KEY      # the key is read from this variable, never written
        models: [big-model]               # or "*": any model id the client names
        rename: {assistant-large: big-model}
        price_per_million: {input: 0.5, output: 1.5}
        timeouts: {connect: 5, first_token: 30, between_chunks: 30}
        max_concurrency: 16
      azure:
        kind: azure-openai                # deployment in the path, api-key header
        base_url: https://RESOURCE.openai.azure.com
        api_version: "2024-10-21"
        api_key_env: AZURE_OPENAI_API_KEY
        models: [gpt-4o]
        deployments: {gpt-4o: prod-gpt-4o}
    routes:
      assistant:
        policy: fallback                  # or balance (replicas of one model)
        targets: [hosted/big-model, quickstart]   # UPSTREAM/MODEL, or a local model
      fine-tune:
        policy: balance
        targets: [gpu1/ft, gpu2/ft]
        session_header: x-session-id      # the same session to the same replica while it is up

``--upstream NAME=URL`` adds an upstream serving any model id (``*``), key from
``CUVEE_UPSTREAM_<NAME>_API_KEY`` if set. An upstream's models are public ids of their own
(``/v1/models`` lists them, ``NAME/MODEL`` for a ``*`` upstream); a route's id is public too."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cuvee.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect: float = Field(5.0, gt=0)
    first_token: float = Field(60.0, gt=0)
    between_chunks: float = Field(60.0, gt=0)


class Prices(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: float = Field(0.0, ge=0)  # per million tokens
    output: float = Field(0.0, ge=0)


class Cooldown(BaseModel):
    """``failures`` within ``window`` seconds take the upstream out of use; a health check
    (its ``/models``) every ``seconds`` brings it back once it answers."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(3, ge=1)
    window: float = Field(30.0, gt=0)
    seconds: float = Field(15.0, gt=0)


# the kinds that go on with a final assistant message of a chat (see Upstream.continues)
CONTINUING_KINDS = frozenset({"cuvee", "llama-server", "vllm"})


class Upstream(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    base_url: str
    api_key_env: str | None = None
    models: list[str] | Literal["*"] = "*"
    rename: dict[str, str] = Field(default_factory=dict)  # public id -> the upstream's id
    kind: Literal["openai", "azure-openai", "vllm", "llama-server", "ollama", "cuvee"] = "openai"
    # azure-openai: base_url https://RESOURCE.openai.azure.com, the API version every request
    # names, and the deployment of each model id (default: a deployment named as the model)
    api_version: str | None = None
    deployments: dict[str, str] = Field(default_factory=dict)
    price_per_million: Prices = Field(default_factory=Prices)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    max_concurrency: int = Field(64, ge=1)
    cooldown: Cooldown = Field(default_factory=Cooldown)
    # what it can honour; None: not declared (requests go as they are, and the upstream's own
    # 400 comes back). A route skips an upstream that declares it lacks what a request needs.
    supports: list[Literal["tools", "json_schema", "logprobs"]] | None = None
    context_length: int | None = Field(None, ge=1)
    # does it go on with a final assistant message instead of starting a new one (what a
    # resume on a replica needs)? None: by kind. cuvee, llama-server (its assistant prefill)
    # and vllm (asked with continue_final_message) do; the OpenAI API, and servers that copy
    # it such as llama-cpp-python's, start a new answer, which would repeat what was sent;
    # ollama is not assumed to either (declare continues: true once checked).
    continues: bool | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("base_url must be an http(s) URL, e.g. http://127.0.0.1:8001/v1")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _azure(self) -> Upstream:
        if self.kind == "azure-openai" and not self.api_version:
            raise ValueError("an azure-openai upstream needs api_version, e.g. 2024-10-21")
        return self

    def can_continue(self) -> bool:
        if self.continues is not None:
            return self.continues
        return self.kind in CONTINUING_KINDS

    def api_key(self) -> str | None:
        """The key, read from the environment at each use (never stored in the config)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def url(self, path: str, model: str | None = None) -> str:
        """Where ``path`` (``/chat/completions``, ``/models`` ...) is, for ``model``: Azure
        OpenAI puts the deployment in the path and the API version in the query."""
        if self.kind == "azure-openai":
            query = f"?api-version={self.api_version}"
            if path == "/models":
                return f"{self.base_url}/openai/models{query}"
            deployment = self.deployments.get(model or "", model or "")
            return f"{self.base_url}/openai/deployments/{deployment}{path}{query}"
        return self.base_url + path

    def auth_headers(self) -> dict[str, str]:
        key = self.api_key()
        if not key:
            return {}
        return (
            {"api-key": key} if self.kind == "azure-openai" else {"Authorization": f"Bearer {key}"}
        )

    def upstream_id(self, model: str) -> str:
        return self.rename.get(model, model)

    def serves(self, model: str) -> bool:
        return self.models == "*" or model in self.models or model in self.rename

    def public_ids(self) -> list[str]:
        if self.models == "*":
            return list(self.rename)
        return list(dict.fromkeys([*self.models, *self.rename]))


class Route(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    policy: Literal["fallback", "balance"] = "fallback"
    targets: list[str] = Field(min_length=1)
    # balance: requests carrying this header with the same value go to the same replica while
    # it is up (its prompt cache stays warm); without the header, the least busy replica
    session_header: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$")


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upstreams: dict[str, Upstream] = Field(default_factory=dict)
    routes: dict[str, Route] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.upstreams and not self.routes

    def target(self, spec: str) -> tuple[Upstream | None, str]:
        """``UPSTREAM/MODEL`` (an upstream and the model id to ask it for) or a local model."""
        name, sep, model = spec.partition("/")
        if sep and name in self.upstreams:
            upstream = self.upstreams[name]
            return upstream, upstream.upstream_id(model)
        return None, spec


def _check(config: GatewayConfig, where: str) -> GatewayConfig:
    for name in [*config.upstreams, *config.routes]:
        if not _NAME.match(name):
            raise ConfigError(f"{where}: invalid name {name!r} (letters, digits, . _ -)")
    clash = set(config.upstreams) & set(config.routes)
    if clash:
        raise ConfigError(
            f"serve config: {', '.join(sorted(clash))} is both an upstream and a route"
        )
    for route in config.routes.values():
        for spec in route.targets:
            upstream, _ = config.target(spec)
            if "/" in spec and upstream is None:
                raise ConfigError(
                    f"{where}: route {route.name!r} names {spec!r}, but there is no upstream "
                    f"{spec.split('/')[0]!r}",
                    hint=f"upstreams: {', '.join(config.upstreams) or 'none'}",
                )
    return config


def load(path: Path | None, one_offs: tuple[str, ...] = ()) -> GatewayConfig:
    """The gateway config of ``path`` (YAML) plus ``--upstream NAME=URL`` one-offs; a clear
    ConfigError naming the file and the key for anything wrong."""
    import yaml

    raw: dict = {}
    where = "--upstream"
    if path is not None:
        where = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the serve config: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the serve config is a mapping (upstreams:, routes:)")
    upstreams = {k: {**(v or {}), "name": k} for k, v in (raw.get("upstreams") or {}).items()}
    routes = {k: {**(v or {}), "name": k} for k, v in (raw.get("routes") or {}).items()}
    unknown = set(raw) - {"upstreams", "routes"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))} (upstreams, routes)")
    for item in one_offs:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise ConfigError(f"--upstream {item!r}: write NAME=URL, e.g. vllm=http://gpu1:8000/v1")
        upstreams[name] = {
            "name": name,
            "base_url": url,
            "api_key_env": f"CUVEE_UPSTREAM_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_API_KEY",
        }
    try:
        config = GatewayConfig(upstreams=upstreams, routes=routes)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{where}: invalid serve config: {problems}") from None
    return _check(config, where)
