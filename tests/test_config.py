"""Settings resolve by one documented precedence: flag > env var > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from cuvee.config import Settings, describe_settings, load_settings
from cuvee.errors import ConfigError


def test_defaults_apply_when_nothing_is_set(tmp_path: Path) -> None:
    settings = load_settings(environ={})
    assert settings.home == Path("~/.cuvee").expanduser()
    assert settings.default_base == "gemma3-270m"
    assert settings.models_dir == settings.home / "models"
    # a default path under ~ is the user's, never a folder named "~" in the working directory
    assert settings.cache == Path("~/.cache/cuvee").expanduser()
    assert settings.engine_repack == "auto"


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("default_base: from-file\nmax_record_tokens: 100\n")
    env = {"CUVEE_HOME": str(tmp_path)}
    assert load_settings(environ=env).default_base == "from-file"
    assert load_settings(environ=env).max_record_tokens == 100
    env["CUVEE_DEFAULT_BASE"] = "from-env"
    assert load_settings(environ=env).default_base == "from-env"
    assert load_settings({"default_base": "from-flag"}, environ=env).default_base == "from-flag"
    # A flag for home beats the environment, and moves the config file with it.
    other = tmp_path / "other"
    other.mkdir()
    settings = load_settings({"home": other}, environ=env)
    assert settings.home == other and settings.max_record_tokens == 2048


def test_cuvee_config_names_another_file(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.yaml"
    config.write_text("default_chat_model: my-tune\n")
    env = {"CUVEE_HOME": str(tmp_path), "CUVEE_CONFIG": str(config)}
    settings = load_settings(environ=env)
    assert settings.config_file == config
    assert settings.default_chat_model == "my-tune"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("defualt_base: typo\n", "unknown setting"),
        ("home: /elsewhere\n", "cannot be set in the config file"),
        ("max_record_tokens: many\n", "invalid value"),
        ("device: tpu\n", "choose one of auto, cuda, cpu"),
        ("- a list\n", "expected a mapping"),
        ("key: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_config_file_is_named(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(environ={"CUVEE_HOME": str(tmp_path)})
    assert "config.yaml" in str(info.value)


def test_a_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CUVEE_MAX_RECORD_TOKENS"):
        load_settings(environ={"CUVEE_HOME": str(tmp_path), "CUVEE_MAX_RECORD_TOKENS": "lots"})


def test_every_setting_is_documented() -> None:
    rows = describe_settings()
    assert {r["name"] for r in rows} == set(Settings.__dataclass_fields__)
    assert all(r["env"].startswith("CUVEE_") and r["help"] for r in rows)


def test_secrets_come_from_the_environment_first_set_wins() -> None:
    from cuvee.config import SECRETS, secret

    assert secret("eval_api_key", {"OPENAI_API_KEY": "b", "CUVEE_EVAL_API_KEY": "a"}) == "a"
    assert secret("eval_api_key", {"CUVEE_EVAL_API_KEY": "", "OPENAI_API_KEY": "b"}) == "b"
    assert secret("embeddings_api_key", {}) is None
    assert not set(SECRETS) & {row["name"] for row in describe_settings()}


def test_every_setting_and_secret_variable_is_in_the_readme() -> None:
    from cuvee.config import SECRETS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    names = [row["env"] for row in describe_settings()]
    names += [v for variables, _ in SECRETS.values() for v in variables]
    missing = [n for n in names if f"`{n}`" not in readme]
    assert missing == []
