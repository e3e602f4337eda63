"""``python -m vaekit`` runs the command line."""

from vaekit.cli import main

if __name__ == "__main__":
    main()
