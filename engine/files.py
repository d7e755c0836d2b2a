"""Output files appear complete or not at all: written under a temporary name, renamed into place."""
import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yields a temporary path beside `path`; on success renames it to `path`, else removes it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
