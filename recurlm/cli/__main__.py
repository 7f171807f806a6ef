"""`python -m recurlm.cli` (and `torchrun -m recurlm.cli`): the command line."""

from recurlm.cli import main

main()
