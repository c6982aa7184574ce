"""`python -m simclr ...` (and `torchrun -m simclr train ...`)."""

from simclr.cli.app import main

if __name__ == "__main__":
    main()
