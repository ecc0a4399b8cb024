"""The ``spindle`` command and ``python -m spindle``: ``spindle --help`` says the rest."""

import sys

from spindle import run


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
