"""A long input for the end-to-end GPU benchmark, made where it runs: a 2-hour file does not
travel to the GPU machine (64 MiB a call), so a short synthetic VOD is generated there and
repeated by stream copy (no re-encoding: seconds, not the minutes a 2-hour encode takes).

    python -m highlightsense.benchmarks.long_input --minutes 120 [--piece-minutes 10] --out F

The piece is benchmarks.bench_support.generate_input's synthetic VOD (AAC; the container from
the extension of --out). Each copy's packets are shifted by the copies before it, so the
timestamps run on without a gap (an AAC piece's encoder priming, 23 ms that its edit list hides
at the start, is heard at each join). The audio repeats every piece: fine for throughput, not
for a study of what is chosen. An --out that exists is kept as it is (delete it to make it again).
"""
import argparse
import sys
import tempfile
from pathlib import Path

import av

from highlightsense.benchmarks.bench_support import generate_input


def repeat_media(piece: Path, dest: Path, copies: int) -> Path:
    """dest: `copies` copies of piece's first audio stream one after another, stream copy."""
    part = dest.with_name(f".{dest.name}.part")  # not a whole file until renamed
    with av.open(str(piece)) as src, av.open(str(part), "w", format=_format(dest)) as out:
        stream = src.streams.audio[0]
        copy = out.add_stream_from_template(stream)
        packets = [p for p in src.demux(stream) if p.dts is not None]
        first = packets[0].dts
        span = packets[-1].dts + packets[-1].duration - first  # one piece, in its time base
        for k in range(copies):
            for p in packets:
                shifted = av.Packet(bytes(p))
                shifted.pts = p.pts - first + k * span
                shifted.dts = p.dts - first + k * span
                shifted.duration = p.duration
                shifted.time_base = p.time_base
                shifted.stream = copy
                out.mux(shifted)
    part.replace(dest)
    return dest


def _format(dest: Path) -> str:
    return {".m4a": "mp4", ".mp4": "mp4", ".mkv": "matroska"}.get(dest.suffix.lower(), "mp4")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=120.0, help="length to make (default 120)")
    ap.add_argument("--piece-minutes", type=float, default=10.0,
                    help="the synthetic piece that is repeated (default 10)")
    ap.add_argument("--out", required=True, type=Path, help="the file (.m4a, .mp4 or .mkv)")
    args = ap.parse_args(argv)
    if not (0 < args.piece_minutes <= args.minutes):
        ap.error("give 0 < --piece-minutes <= --minutes")
    if args.out.exists():
        print(f"long_input: {args.out} exists; kept", file=sys.stderr)
        return 0
    copies = round(args.minutes / args.piece_minutes)
    with tempfile.TemporaryDirectory() as tmp:
        piece = generate_input(Path(tmp) / f"piece{args.out.suffix}", args.piece_minutes)
        repeat_media(piece, args.out, copies)
    with av.open(str(args.out)) as c:
        seconds = float(c.streams.audio[0].duration * c.streams.audio[0].time_base)
    print(f"long_input: {args.out}: {copies} x {args.piece_minutes:g} min, "
          f"{seconds / 60:.1f} min of audio", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
