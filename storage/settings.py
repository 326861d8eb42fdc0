"""Typed configuration: `bot_config.toml` for everything but secrets, the environment for tokens.

The loader is strict: an unknown key or a bad value is an error that names it (`[queue] max_queud: unknown
key`), because a typo that silently falls back to a default is how a production queue loses its limits.
Secrets are `SecretStr`: their repr is masked, so a logged settings object never shows a token.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from storage.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("bot_config.toml")
CONFIG_ENV = "DUET_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageSettings(_Section):
    database_url: str = "sqlite+aiosqlite:///var/duet.db"
    media_dir: Path = Path("var/media")
    busy_timeout_ms: int = Field(default=30_000, ge=1_000)
    max_file_bytes: int = Field(default=200 * 1024 * 1024, gt=0)


class QueueSettings(_Section):
    max_queued: int = Field(default=200, ge=1)
    max_active_per_user: int = Field(default=2, ge=1)
    submit_cooldown_s: float = Field(default=0.0, ge=0.0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    lease_s: float = Field(default=90.0, gt=0.0)
    heartbeat_s: float = Field(default=15.0, gt=0.0)
    job_timeout_s: float = Field(default=3 * 3600.0, gt=0.0)
    retry_backoff_s: float = Field(default=30.0, ge=0.0)
    retry_backoff_max_s: float = Field(default=600.0, ge=0.0)
    reaper_interval_s: float = Field(default=10.0, gt=0.0)
    poll_interval_s: float = Field(default=1.0, gt=0.0)
    keep_jobs_days: float = Field(default=30.0, gt=0.0)
    keep_inputs_hours: float = Field(default=24.0, gt=0.0)
    keep_results_days: float = Field(default=7.0, gt=0.0)


class LimitSettings(_Section):
    max_script_chars: int = Field(default=2000, ge=10)
    max_line_chars: int = Field(default=300, ge=10)
    max_speech_s: float = Field(default=60.0, gt=0.0)
    max_photo_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    max_photo_pixels: int = Field(default=24_000_000, gt=0)
    min_photo_side: int = Field(default=256, ge=16)


class RenderDefaults(_Section):
    quality: Literal["480p", "720p"] = "720p"
    steps: int = Field(default=40, ge=1, le=100)
    text_guidance: float = Field(default=5.0, ge=0.0)
    audio_guidance: float = Field(default=4.0, ge=0.0)
    use_teacache: bool = False
    use_apg: bool = False
    voice_a: str = "af_heart"
    voice_b: str = "am_adam"
    language: Literal["auto", "en", "zh"] = "auto"


class DiscordSettings(_Section):
    api_base_url: str = "https://discord.com/api/v10"
    dev_guild_id: str | None = None
    sync_globally: bool = False
    admin_ids: tuple[str, ...] = ()
    upload_limit_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    edit_interval_s: float = Field(default=5.0, ge=1.0)


class TelegramSettings(_Section):
    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"
    admin_ids: tuple[str, ...] = ()
    upload_limit_bytes: int = Field(default=50 * 1000 * 1000, gt=0)
    edit_interval_private_s: float = Field(default=1.0, ge=0.5)
    edit_interval_group_s: float = Field(default=3.0, ge=1.0)


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8780, ge=0, le=65535)
    public_base_url: str = "http://127.0.0.1:8780"
    link_ttl_s: float = Field(default=24 * 3600.0, gt=0.0)


# The engine's presets (engine/presets.py PRESETS; a test keeps the two lists equal), named here so that the
# config loader and the command lines validate a name without importing the engine.
EnginePreset = Literal["full", "full-random", "tiny"]
ENGINE_PRESETS: tuple[str, ...] = get_args(EnginePreset)


class EngineSettings(_Section):
    weights_dir: Path = Path("weights")
    preset: EnginePreset = "full"
    worker_name: str | None = None


class Settings(_Section):
    storage: StorageSettings = StorageSettings()
    queue: QueueSettings = QueueSettings()
    limits: LimitSettings = LimitSettings()
    render: RenderDefaults = RenderDefaults()
    discord: DiscordSettings = DiscordSettings()
    telegram: TelegramSettings = TelegramSettings()
    http: HttpSettings = HttpSettings()
    engine: EngineSettings = EngineSettings()


class Secrets(BaseModel):
    """Tokens, from the environment only. Never put them in `bot_config.toml` or in argv."""

    model_config = ConfigDict(frozen=True)

    discord_token: SecretStr | None = None
    telegram_token: SecretStr | None = None
    link_secret: SecretStr | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Secrets:
        env = dict(os.environ) if env is None else env

        def read(name: str) -> SecretStr | None:
            value = env.get(name, "").strip()
            return SecretStr(value) if value else None

        return cls(
            discord_token=read("DISCORD_TOKEN"),
            telegram_token=read("TELEGRAM_TOKEN"),
            link_secret=read("DUET_LINK_SECRET"),
        )


def load_settings(path: Path | str | None = None) -> Settings:
    """Read the config file (explicit path, else $DUET_CONFIG, else ./bot_config.toml if present)."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    if path is None:
        return Settings()
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file {path} does not exist.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_settings(raw, source=str(path))


def parse_settings(raw: dict, source: str = "config") -> Settings:
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def _describe(exc: ValidationError, source: str) -> str:
    problems = []
    for error in exc.errors():
        *section, key = [str(part) for part in error["loc"]] or ["?"]
        where = f"[{'.'.join(section)}] {key}" if section else key
        if error["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key")
        else:
            problems.append(f"{where}: {error['msg']} (got {error.get('input')!r})")
    return f"{source}: " + "; ".join(problems)
