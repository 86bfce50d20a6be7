"""The runtime directory that holds the worker sockets: private to this user whatever the
umask. A fresh temporary directory by default; a given one is created 0700, or refused when
other users could write to it (they could then replace a socket)."""

from __future__ import annotations

import os
import stat
import tempfile


class RuntimeDirError(ValueError):
    """The runtime directory is unsafe or unusable; the message names it and says why."""


def private_runtime_dir(path: str) -> str:
    """Create or check the runtime directory; returns its path."""
    if not path:
        return tempfile.mkdtemp(prefix="asr-scheduler-")  # always 0700
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise RuntimeDirError(f"--runtime-dir {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"--runtime-dir {path}: not a directory")
    if st.st_uid != os.getuid():
        raise RuntimeDirError(f"--runtime-dir {path}: owned by uid {st.st_uid}, not by this "
                              f"user (uid {os.getuid()}); use a directory of your own")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeDirError(f"--runtime-dir {path}: other users can write to it (mode "
                              f"{stat.S_IMODE(st.st_mode):o}); use a private directory (0700)")
    os.chmod(path, 0o700)  # readable by nobody else either, whatever the umask made it
    return path
