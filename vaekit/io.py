"""Files written whole or not at all: `atomic_write` and the clean-up of what a killed writer left.

    atomic_write("runs/a/config.json", lambda f: f.write(text.encode()))
    remove_stale_temporaries("runs/a")   # before a resumed run writes into its folder

The data goes to a temporary file in the same folder, is flushed to disk and renamed over the
target, so a process killed at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "remove_stale_temporaries", "is_own_leftover", "holds_nothing",
           "FolderLock", "FolderBusy", "LOCK_FILE"]

LOCK_FILE = ".vaekit.lock"
"""The file in a run folder that its writer holds an OS lock on (and writes its PID into)."""

_TMP_SUFFIX = ".vaekit.tmp"  # marks atomic_write's temporaries, so that only they are cleaned up


def atomic_write(path: str | os.PathLike[str], write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file, fsync it and rename it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def is_own_leftover(path: str | os.PathLike[str]) -> bool:
    """Whether a file is vaekit's own bookkeeping, not a result: the lock file, or a temporary
    of `atomic_write` (a killed writer's). A folder holding only these is free for a new run."""
    name = Path(path).name
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(_TMP_SUFFIX))


def holds_nothing(folder: str | os.PathLike[str]) -> bool:
    """Whether a folder is missing, or holds nothing but vaekit's own leftovers
    (`is_own_leftover`): a new run may go into it."""
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and all(
        is_own_leftover(p) for p in folder.iterdir()))


def remove_stale_temporaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporaries of writes that a killed process never finished.

    `atomic_write` names them ``.<file>.<random>.vaekit.tmp``; the complete file beside each is
    untouched, and no other file matches.
    Call it only while no other process writes into ``run_dir``.

    Returns:
        The paths removed.
    """
    stale = list(Path(run_dir).glob(f".*{_TMP_SUFFIX}"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class FolderLock:
    """An exclusive OS lock (``fcntl.flock``) on a folder, held by the one process that writes it.

        with FolderLock("runs/a"):      # raises FolderBusy at once if another process holds it
            ...                         # write the run folder

    The lock is on the folder itself (created if missing), so deleting a file cannot let a
    second writer in; ``LOCK_FILE`` inside it holds the holder's PID, for the message a second
    writer gets. That file is opened without following links and must be a regular file: a
    link planted in its place is refused, never written through. The OS releases the lock
    when the holder exits, however it exits. Readers need no lock.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None
        self.pid_fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock, or raise `FolderBusy` naming the holder's PID.

        Raises:
            FolderBusy: another process holds it.
            OSError: the folder cannot be made or locked, or its lock file is not a regular file.
        """
        import fcntl
        import stat

        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            pid_fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                             0o644)
        except OSError as e:
            os.close(fd)
            if (self.folder / LOCK_FILE).is_symlink():
                raise OSError(e.errno, f"{self.folder / LOCK_FILE} is a link, not vaekit's lock "
                              "file; remove it", str(self.folder / LOCK_FILE)) from None
            raise
        if not stat.S_ISREG(os.fstat(pid_fd).st_mode):
            os.close(fd)
            os.close(pid_fd)
            raise OSError(0, f"{self.folder / LOCK_FILE} is not a regular file; remove it",
                          str(self.folder / LOCK_FILE))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(pid_fd, 32, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
                os.close(pid_fd)
            raise FolderBusy(self.folder, holder) from None
        os.ftruncate(pid_fd, 0)
        os.pwrite(pid_fd, f"{os.getpid()}\n".encode(), 0)
        self.fd, self.pid_fd = fd, pid_fd
        return self

    def release(self) -> None:
        """Give the lock back (the PID file stays, empty)."""
        if self.pid_fd is not None:
            os.ftruncate(self.pid_fd, 0)
            os.close(self.pid_fd)
            self.pid_fd = None
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class FolderBusy(OSError):
    """Another process holds the `FolderLock` of a folder."""

    def __init__(self, folder: Path, holder: str) -> None:
        self.folder, self.holder = folder, holder
        super().__init__(f"{folder} is being written by another vaekit process (PID {holder}); "
                         "wait for it to finish or stop it, or choose another folder")
