"""``python -m vaekit`` runs the command line."""

from vaekit.cli import cli

if __name__ == "__main__":
    cli()
