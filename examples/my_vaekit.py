"""The `vaekit` command line with your own likelihoods: import them, then run the CLI.

    python examples/my_vaekit.py fit --likelihood student-t --epochs 3 --out runs/student_t
    python examples/my_vaekit.py sample runs/student_t

`--likelihood` accepts the names registered when the options are parsed, so plain `vaekit fit`
does not know "student-t": a program has to import the module that registers it first, as this
one does. Every command and option of `vaekit` works here (`--epochs`, `--limit-train`, `--out`,
`--scale` ...), and commands on the run folder (sample, evaluate ...) need the same import.
"""

import custom_likelihood  # noqa: F401  (registers "student-t"; it sits next to this file)

from vaekit.cli import cli

if __name__ == "__main__":
    cli()
