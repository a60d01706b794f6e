"""`python -m tttnn ...`: the `tttnn` command line."""

from tttnn.cli import main

if __name__ == "__main__":
    main()
