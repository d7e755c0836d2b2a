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


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yields a temporary path beside `path`; on success renames it to `path`, else removes it.
    An OS error (a full disk, a read-only folder) becomes a one-line HighlightSenseError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError) and e.strerror:
            advice = "free some space" if e.errno in _FULL else "fix the folder"
            raise OutputError(
                f"cannot write {path}: {e.strerror}; {advice} or choose another --out",
                e.strerror) from None
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def content_identity(path) -> dict:
    """A file by content (sha256): a copy moved into place is the same file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest()}
