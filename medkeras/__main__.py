"""`python -m medkeras` runs the CLI."""

from medkeras.cli import main

main()
