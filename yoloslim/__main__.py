"""`python -m yoloslim` runs the `yoloslim` command."""

from yoloslim.cli import main

main()
