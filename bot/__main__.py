"""`python -m bot` is the `duet` command, for machines where Duet runs from a checkout without being installed."""

from bot.cli import main

main(prog_name="duet")
