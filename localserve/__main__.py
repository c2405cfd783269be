"""`python -m localserve` is the `localserve` command."""

from localserve.cli.app import main

main()
