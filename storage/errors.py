"""The one exception tree of Duet.

Every error carries two texts: `user_message` is safe to show in a chat (no paths, no SQL, no stack),
`admin_detail` is for logs and `duet queue show`. Front ends show the first and never the second.
"""

from __future__ import annotations


class DuetError(Exception):
    """Base of all errors Duet raises on purpose."""

    def __init__(self, user_message: str, admin_detail: str | None = None) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.admin_detail = admin_detail or user_message


class ConfigError(DuetError):
    """`bot_config.toml` or the environment is wrong; the message names the key."""


class JobNotFound(DuetError):
    """No such job — or it belongs to someone else (we never reveal which)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"No job {job_id} was found.", f"job {job_id} not found or not owned by the actor")
        self.job_id = job_id


class SubmitRefused(DuetError):
    """A polite refusal at submission: queue full, per-user limit, cooldown, paused intake, blocked user."""

    def __init__(self, reason: str, user_message: str, admin_detail: str | None = None) -> None:
        super().__init__(user_message, admin_detail)
        self.reason = reason


class LeaseLost(DuetError):
    """A fenced worker write matched no row: the job was reaped, cancelled or finished elsewhere.

    The worker must stop working on the job; nothing it writes afterwards can change it.
    """

    def __init__(self, job_id: str) -> None:
        super().__init__("This job is no longer held by this worker.", f"lease lost for job {job_id}")
        self.job_id = job_id


class InvalidTransition(DuetError):
    """An operator asked for a state change that the job's current state does not allow."""


class MediaError(DuetError):
    """A media file is too large, missing, or does not match its recorded digest."""
