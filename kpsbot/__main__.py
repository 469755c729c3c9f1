"""`python -m kpsbot`."""

from kpsbot.cli import main

main()
