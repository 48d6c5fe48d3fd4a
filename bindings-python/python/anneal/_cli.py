"""The `anneal` console script: the command line of the Rust core (`anneal --help`)."""

import sys

from anneal._anneal import cli_main


def main() -> None:
    """Runs `anneal` with the process arguments and exits with its code."""
    try:
        code = cli_main(sys.argv[1:])
    except KeyboardInterrupt:
        # The command already cancelled its operation and said how to resume.
        code = 130
    sys.exit(code)
