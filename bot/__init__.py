"""Chat front ends: the platform-neutral core, the Discord and Telegram adapters, delivery, the CLI."""
