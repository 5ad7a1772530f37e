"""Private files: everything agentguard writes holds conversations, so it is 0600 in 0700.

``mkdir(parents=True, mode=0o700)`` gives the *parents* it creates the umask's mode (often
0755), and SQLite creates a database with the umask's mode (often 0644) and its ``-wal`` and
``-shm`` files with the database's mode. So directories are created one level at a time, and a
database file is created 0600 before SQLite opens it.

Directories that exist already and are not agentguard's (``/tmp``, a project folder named in a
store URL) are left alone: the files inside are private anyway. ``AGENTGUARD_HOME`` is
agentguard's own: :func:`tighten_home` makes it 0700 when it is looser, or, when it belongs to
another user (it cannot be changed), logs a warning naming it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from agentguard.log import logger

__all__ = ["private_dir", "private_file", "tighten_home"]


def private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents as 0700 directories; leave existing ones be.

    Raises:
        OSError: a directory cannot be created.
    """
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
            # The mode given to mkdir is masked by the umask; set it exactly.
            os.chmod(directory, 0o700)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    return path


def private_file(path: Path) -> None:
    """Make sure ``path`` exists as a 0600 file (an empty one is created if missing; an existing
    one of this user's is tightened).

    Raises:
        OSError: the file cannot be created.
    """
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags, 0o600)
    try:
        info = os.fstat(descriptor)
        if info.st_mode & 0o077 and info.st_uid == os.getuid():
            os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)


def tighten_home(home: Path) -> None:
    """Make ``AGENTGUARD_HOME`` 0700 if it exists with a looser mode.

    A home that belongs to another user is not changed (it cannot be): a warning names it.
    """
    try:
        info = home.lstat()
    except OSError:
        return  # not created yet: it will be created 0700
    if not stat.S_ISDIR(info.st_mode) or not info.st_mode & 0o077:
        return
    if info.st_uid != os.getuid():
        logger.warning(
            "home_not_private",
            path=str(home),
            mode=oct(stat.S_IMODE(info.st_mode)),
            problem="AGENTGUARD_HOME is readable by others and belongs to another user; "
            "set it to a directory of your own",
        )
        return
    try:
        os.chmod(home, 0o700)
    except OSError as exc:
        logger.warning(
            "home_not_private", path=str(home), mode=oct(info.st_mode & 0o777), error=str(exc)
        )
