"""`python -m streams.cli` runs the `adstream` command."""

from streams.cli import main

main()
