"""python -m labctl: the same as the labctl command."""

from .cli import main

main()
