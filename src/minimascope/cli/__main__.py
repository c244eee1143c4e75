"""``python -m minimascope.cli``."""

from minimascope.cli import main

main()
