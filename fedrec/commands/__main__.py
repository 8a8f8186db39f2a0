"""`python -m fedrec.commands` is the `fedrec` command."""

from fedrec.commands.main import main

main()
