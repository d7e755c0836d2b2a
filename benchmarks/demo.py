"""`highlightsense demo`: make a sample VOD with known loud moments, run detect on it, and say
which of the moments the chosen clips contain."""
from pathlib import Path

from highlightsense.benchmarks.media import write_media
from highlightsense.benchmarks.synth import SyntheticVod
from highlightsense.engine.config import PRESETS, load_config
from highlightsense.engine.detect import detect


def run_demo(out: str, minutes: float = 5.0, quiet: bool = False) -> int:
    from highlightsense.engine.cli import print_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vod = SyntheticVod(minutes * 60, seed=0)
    sample = out / "sample_vod.mp4"
    print(f"writing a {minutes:g}-minute sample VOD with {len(vod.moments)} known moments, "
          f"{len(vod.music)} stretches of loud music and {len(vod.bangs)} loud bangs: {sample}")
    write_media(sample, vod.blocks(), video=True)
    cfg = load_config(str(PRESETS / "demo.yaml"))
    print(f"highlightsense detect {sample} --out {out / 'results'} --config demo")
    result = detect(str(sample), out / "results", cfg, show_progress=not quiet)
    print("\n".join(result.summary))
    print_table(result.highlights)
    found = 0
    for start, end in vod.moments:
        ranks = [r["rank"] for r in result.highlights
                 if r["start_sec"] <= start and end <= r["end_sec"]]
        found += bool(ranks)
        where = f"in clip {ranks[0]}" if ranks else "missed"
        print(f"  known moment {start:6.1f}-{end:6.1f} s: {where}")
    print(f"{found} of {len(vod.moments)} known moments are inside a chosen clip; "
          f"outputs in {out / 'results'} (see scores.png)")
    return 0
