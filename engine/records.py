"""Records this tool reads back from an output folder (the progress record, highlights.json):
each is checked against a JSON schema before anything in it is used, since anyone who can
write to the folder can write them.

jsonschema (a well-kept implementation of the standard) does the checking: the schemas are
data, read as the record's specification, and a refusal names the place in the record that is
wrong. Two things JSON Schema cannot say are added here: a "number" is finite (Python's json
reads NaN and Infinity), and a sound level may also be -Infinity (nothing heard yet).
"""
import json
import math
from pathlib import Path
from typing import Any, Sequence

import jsonschema

from highlightsense.engine.errors import HighlightSenseError


class RecordError(HighlightSenseError):
    """A record read back from disk is not one this tool wrote."""


def _finite(checker, value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _level(checker, value) -> bool:
    return _finite(checker, value) or value == -math.inf


# "number" is a finite one; "level" a finite one or -Infinity.
_CHECKER = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
    {"number": _finite, "level": _level})
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_CHECKER)

COUNT = {"type": "integer", "minimum": 0}
SECONDS = {"type": "number", "minimum": 0}
SOURCE = {"type": "string", "minLength": 1, "maxLength": 8192}
# operators.sources.hls_source.TimelineEntry, as vars() writes it.
TIMELINE = {"type": "array", "maxItems": 1_000_000, "items": {
    "type": "object", "additionalProperties": False,
    "required": ["stream_sec", "origin_sec", "discontinuity", "sequence"],
    "properties": {"stream_sec": SECONDS, "origin_sec": {"type": "number"},
                   "discontinuity": COUNT, "sequence": COUNT}}}
# What a run learnt of its source, that clips are cut with: a progress record's `info`, and
# highlights.json's keys beside its results.
SOURCE_INFO = {
    "type": "object",
    "required": ["source", "origin_sec", "duration_sec", "has_video"],
    "properties": {
        "source": SOURCE, "origin_sec": {"type": "number"}, "duration_sec": SECONDS,
        "has_video": {"type": "boolean"},
        "audio_stream": {"anyOf": [COUNT, {"type": "null"}]},
        "timeline": {"anyOf": [TIMELINE, {"type": "null"}]},
    },
}


def read_json(path: Path, constants: Sequence[str] = ()) -> Any:
    """The JSON in `path`; ValueError when it is not JSON, nests deeper than Python's parser
    goes, or holds NaN, Infinity or -Infinity where not named in `constants`. OSError when it
    cannot be read."""
    values = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

    def constant(name: str) -> float:
        if name not in constants:
            raise ValueError(f"{name} is not a number this tool writes there")
        return values[name]

    try:
        return json.loads(Path(path).read_bytes(), parse_constant=constant)
    except RecursionError:
        raise ValueError("nested too deep") from None


def problem(data: Any, schema: dict) -> str:
    """What is wrong with `data` against `schema`, in a few words with where it is
    ("$.windows: 'abc' is not of type 'array'"); "" when nothing is."""
    error = jsonschema.exceptions.best_match(_Validator(schema).iter_errors(data))
    if error is None:
        return ""
    message = " ".join(error.message.split())
    if len(message) > 100:
        message = message[:97] + "..."
    return f"{error.json_path}: {message}"


def check(data: Any, schema: dict, what: str, advice: str) -> Any:
    """`data` when it matches `schema`; else a one-line RecordError naming `what`, the
    problem and `advice`."""
    wrong = problem(data, schema)
    if wrong:
        raise RecordError(f"{what} is not one this tool wrote ({wrong}); {advice}")
    return data
