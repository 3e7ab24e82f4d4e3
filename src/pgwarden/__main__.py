"""``python -m pgwarden``."""

from pgwarden.cli import main

main()
