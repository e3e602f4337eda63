"""``python -m vaekit`` and the ``vaekit`` command: the command line, `vaekit.cli.main`.

The command line is imported inside `main`, so a Ctrl-C while it loads is the same one line and
exit code 130 as one at any later moment.
"""

import sys


def main() -> None:
    """Run `vaekit.cli.main`; a Ctrl-C while importing it prints one line and exits with 130."""
    try:
        from vaekit.cli import main as cli_main
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
