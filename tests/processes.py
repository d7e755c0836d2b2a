"""Helpers for tests that drive the command in a child process."""
import threading


def wait_for_line(stream, text: bytes, timeout: float) -> bytes:
    """Reads a child's stream until a line holding `text` (what it said so far), or fails."""
    said, found = [], threading.Event()

    def read():
        for line in iter(stream.readline, b""):
            said.append(line)
            if text in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), b"".join(said).decode(errors="replace")
    return b"".join(said)
