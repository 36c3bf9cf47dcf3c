"""An OSError (disk full, read-only folder, a file where a folder should be) as one line with a way out."""

from __future__ import annotations

import errno

HINTS: dict[int, str] = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "choose a folder you can write to (or fix its permissions)",
    errno.EPERM: "choose a folder you can write to (or fix its permissions)",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EISDIR: "that path is a folder; name a file",
    errno.EEXIST: "something of that name exists already; choose another path",
    errno.ENOENT: "check the path",
}


def describe_os_error(exc: OSError) -> str:
    """E.g. 'No space left on device: out/model.safetensors (free some space or write somewhere else)'."""
    what = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    text = f"{what}: {' -> '.join(paths)}" if paths else what
    hint = HINTS.get(exc.errno or 0)
    message = f"{text} ({hint})" if hint else text
    return message.replace("\n", " ")  # the CLI promises one line
