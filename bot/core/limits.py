"""The deployment's limits (`[limits]` of bot_config.toml) as the objects the checks take."""

from __future__ import annotations

from bot.core.script import ScriptLimits
from storage.settings import Settings


def script_limits(settings: Settings) -> ScriptLimits:
    limits = settings.limits
    return ScriptLimits(
        max_script_chars=limits.max_script_chars, max_line_chars=limits.max_line_chars, max_speech_s=limits.max_speech_s
    )
