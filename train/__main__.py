"""`python -m digit_reader.train ...` is `digit-train ...` (the form torchrun's `-m` takes)."""

from digit_reader.train.cli import main

main()
