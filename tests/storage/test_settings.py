"""Configuration: the shipped file is valid and complete, mistakes are named, secrets stay secret."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import pytest

from storage.errors import ConfigError
from storage.settings import Secrets, Settings, load_settings, parse_settings

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_loads_and_matches_the_defaults():
    assert load_settings(REPO / "bot_config.toml") == Settings()


def test_shipped_config_documents_every_setting():
    raw = tomllib.loads((REPO / "bot_config.toml").read_text())
    text = (REPO / "bot_config.toml").read_text()
    for section, model in Settings.model_fields.items():
        for key in model.annotation.model_fields:
            assert key in raw.get(section, {}) or re.search(rf"#\s*{key}\s*=", text), f"[{section}] {key} undocumented"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError) as error:
        parse_settings({"queue": {"max_queud": 5}}, source="bot_config.toml")
    assert "[queue] max_queud: unknown key" in error.value.user_message


def test_unknown_section_is_named():
    with pytest.raises(ConfigError, match="quue: unknown key"):
        parse_settings({"quue": {}})


def test_bad_value_is_named_with_what_was_given():
    with pytest.raises(ConfigError) as error:
        parse_settings({"queue": {"max_attempts": 0}, "render": {"quality": "4k"}})
    message = error.value.user_message
    assert "[queue] max_attempts" in message and "got 0" in message
    assert "[render] quality" in message and "'4k'" in message


def test_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[queue\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")


def test_secrets_come_from_the_environment_and_never_print(caplog):
    token = "123456789:AAHsecretsecretsecretsecretsecret12"
    secrets = Secrets.from_env({"TELEGRAM_TOKEN": token, "DISCORD_TOKEN": "  "})
    assert secrets.telegram_token.get_secret_value() == token
    assert secrets.discord_token is None
    with caplog.at_level(logging.INFO):
        logging.getLogger("duet.test").info("secrets: %s %r", secrets, secrets)
    assert token not in caplog.text and token not in repr(secrets) and token not in str(secrets)


def test_tokens_are_not_settings():
    with pytest.raises(ConfigError, match="token: unknown key"):
        parse_settings({"telegram": {"token": "x"}})
