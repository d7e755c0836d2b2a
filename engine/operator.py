"""What every chunk operator is: it takes chunks one at a time and returns the chunks it can emit
now; at end of stream, flush() returns whatever it still holds. It knows nothing of its
neighbours, of queues or of asyncio; the pipeline runs it (in a worker thread when `threaded`)."""
from typing import Any, Iterator, List


class Operator:
    name = "operator"
    threaded = True  # heavy compute runs off the event loop

    def process(self, chunk: Any) -> List[Any]:
        raise NotImplementedError

    def flush(self) -> List[Any]:
        return []


class Source:
    """A producer of chunks. The pipeline pulls next() from a worker thread, so it may block."""

    name = "source"
    duration_sec = None  # float when known, for progress and ETA

    def __iter__(self) -> Iterator[Any]:
        raise NotImplementedError

    def close(self) -> None:
        pass
