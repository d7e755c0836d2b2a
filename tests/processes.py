"""Helpers for tests that drive the command in a child process."""
import signal
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


def interruptible() -> None:
    """preexec_fn for a child that the test will Ctrl-C: a test run started in the background
    (`cmd &` without job control) ignores SIGINT, and children inherit that; give it back."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
