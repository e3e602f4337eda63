"""Errors vaekit raises for bad input (the CLI prints them as one line and exits with code 2),
and `Interrupted`, which is not an error: training stopped by a signal, its checkpoint written."""

__all__ = ["VaekitError", "ConfigError", "PluginError", "DataError", "CheckpointError", "TrainingError",
           "Interrupted"]


def _one_line(self: BaseException) -> list[str]:
    """What IPython shows for the exception (its ``_render_traceback_`` hook): the one line
    with the fix, not a wall of traceback."""
    return [f"{type(self).__name__}: {self}"]


class VaekitError(ValueError):
    """Base class: a problem with what the user asked for, with the fix in the message. In
    Jupyter it shows as that one line."""

    _render_traceback_ = _one_line


class ConfigError(VaekitError):
    """An invalid setting (likelihood, β, z_dim, image size, device ...)."""


class PluginError(ConfigError):
    """Code that a run or a settings file names (a network, likelihood, prior or posterior) that
    is not trusted (not imported yet, and ``trust_plugins`` not given) or cannot be imported."""


class DataError(VaekitError):
    """Data that is missing, unreadable or out of range for the likelihood."""


class CheckpointError(VaekitError):
    """A run folder or checkpoint that cannot be read or does not match."""


class TrainingError(VaekitError):
    """Training that cannot go on (a non-finite loss); the last checkpoint written is kept."""


class Interrupted(Exception):
    """Training stopped by SIGINT/SIGTERM after writing a checkpoint (if it had a run folder);
    Jupyter's stop button sends SIGINT, and the notebook shows this one line.

    Attributes:
        signum: The signal received.
        epoch: The epoch that was running (or had just finished).
        step: Steps finished in it (0: the epoch was complete).
        run_dir: The run folder to resume, if any.
    """

    _render_traceback_ = _one_line

    def __init__(self, signum: int, epoch: int, step: int, run_dir: object = None) -> None:
        self.signum, self.epoch, self.step, self.run_dir = signum, epoch, step, run_dir
        where = f"epoch {epoch}" + (f" step {step}" if step else " (complete)")
        how = (f"; continue with: vaekit fit --resume {run_dir}" if run_dir is not None else "")
        super().__init__(f"interrupted by signal {signum} during {where}, checkpoint written{how}"
                         if run_dir is not None else f"interrupted by signal {signum} during {where}")
