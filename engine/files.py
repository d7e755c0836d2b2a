"""Output files appear complete or not at all: written under a temporary name, renamed into place."""
import contextlib
import errno
import hashlib
import os
from pathlib import Path

from highlightsense.engine.errors import HighlightSenseError

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class OutputError(HighlightSenseError):
    """An output could not be written; `reason` is the OS's word for why."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _os_error(path: Path, e: OSError) -> OutputError:
    advice = "free some space" if e.errno in _FULL else "fix the folder"
    return OutputError(f"cannot write {path}: {e.strerror}; {advice} or choose another --out",
                       e.strerror)


def temp_name(path: Path) -> Path:
    """The name an output is written under until it is complete: .NAME.part beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.part")


def create_new(path: Path):
    """A new, empty file at `path`, open for writing and reading (binary), never through a
    symbolic link: whatever was at `path` (a name this tool gives its temporary files) goes
    first, the link itself and not its target, and a file that appears there meanwhile is an
    error, not followed (O_EXCL, O_NOFOLLOW)."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        path.unlink()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _BINARY, 0o666)
    return os.fdopen(fd, "w+b")


_BINARY = getattr(os, "O_BINARY", 0)


@contextlib.contextmanager
def atomic_file(path: Path):
    """Yields a new file (binary, create_new) under path's temporary name; on success it is
    flushed to disk and renamed to `path` (which replaces a link there, never what it points
    at), else removed. An OS error (a full disk, a read-only folder) becomes a one-line
    OutputError."""
    path = Path(path)
    tmp = temp_name(path)
    made = False
    try:
        with create_new(tmp) as f:
            made = True
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if made:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if isinstance(e, OSError) and e.strerror:
            raise _os_error(path, e) from None
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text.encode())


def check_own_folder(path: Path) -> Path:
    """Refuses `path` when a link (or a file) is there: a folder of this tool's inside --out
    (clips/) is never one it would write or delete through."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        what = "a symbolic link" if path.is_symlink() else "not a folder"
        raise HighlightSenseError(
            f"{path} is {what}; this tool writes there only into a folder of its own: move it "
            f"away or choose another --out")
    return path


def own_folder(path: Path) -> Path:
    """`path` as a folder of this tool's inside --out (check_own_folder), made if missing."""
    path = check_own_folder(path)
    try:
        path.mkdir(exist_ok=True)
    except OSError as e:
        raise _os_error(path, e) from None
    return path


def content_identity(path) -> dict:
    """A file by content (sha256): a copy moved into place is the same file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest()}
