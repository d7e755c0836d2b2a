"""The chosen highlights as an editor's timeline: fcpxml, fcp7xml, edl, otio, mlt, chapters and
csv-segments (`highlightsense export`, `detect/select --export`).

Every format is a pure function of a Plan: the highlight ranges in frames of the media they
point at, in the order asked for. Times: editor time = stream time + the source's origin (the
container time of stream sample 0) - the video stream's start (what an editor calls 0), at the
video stream's frame rate, rounded to the nearest frame. Audio-only media get 30 fps (said in
Plan.notes). With --media clips each range points into its clip file, whose first frame is
the clip's real start (clip_start_sec: a stream copy begins at the keyframe before the window).

FCPXML is written here with rational times (the OTIO fcpx_xml adapter drifts at 29.97 and
runs ffprobe); FCP7 XML, CMX 3600 EDL, OTIO JSON and MLT come from OpenTimelineIO's adapters,
with markers added to the MLT here (the adapter drops them): Shotcut's `shotcut:markers` and
Kdenlive's `kdenlive:guides` on the main tractor.
"""
import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Optional, Sequence
from urllib.parse import quote

from highlightsense.engine.errors import HighlightSenseError

FORMATS = {  # format: file extension
    "fcpxml": ".fcpxml", "fcp7xml": ".xml", "edl": ".edl", "otio": ".otio", "mlt": ".mlt",
    "chapters": ".txt", "csv-segments": ".csv",
}
AUDIO_ONLY_FPS = Fraction(30)
DROP_FRAME_RATES = (Fraction(30000, 1001), Fraction(60000, 1001))
CHAPTER_MIN_SEC = 10
CHAPTERS_MIN = 3


@dataclass(frozen=True)
class Media:
    """One media file as an editor sees it."""

    path: str
    fps: Fraction  # the video stream's frame rate (30 for audio-only media)
    start_sec: Fraction = Fraction(0)  # container time of the video's first frame
    duration_sec: float = 0.0  # of the file, from its start
    has_video: bool = True
    has_audio: bool = True
    width: int = 1920
    height: int = 1080
    audio_rate: int = 48000
    audio_channels: int = 2
    timecode: Optional[str] = None  # the source's starting timecode, when it carries one

    @property
    def drop_frame(self) -> bool:
        return self.fps in DROP_FRAME_RATES

    def frame(self, container_sec) -> int:
        """The nearest frame to a container time."""
        return _round((Fraction(container_sec) - self.start_sec) * self.fps)

    @property
    def frames(self) -> int:
        return max(0, _round(Fraction(self.duration_sec) * self.fps))

    @property
    def tc_frames(self) -> int:
        """The starting timecode in frames (0 without one)."""
        if not self.timecode:
            return 0
        import opentimelineio as otio

        return int(otio.opentime.from_timecode(self.timecode, float(self.fps)).value)


@dataclass
class Cut:
    """One highlight on the timeline: [src_in, src_out) frames of `media`, peak a frame in it."""

    rank: int
    confidence: float
    media: Media
    src_in: int
    src_out: int
    peak: Optional[int]
    start_sec: float  # stream time of the window
    end_sec: float

    @property
    def name(self) -> str:
        return f"#{self.rank} score {self.confidence:.3f}"

    @property
    def frames(self) -> int:
        return self.src_out - self.src_in


@dataclass
class Plan:
    fps: Fraction  # the timeline's rate (the source's)
    cuts: List[Cut]
    source: Media
    name: str = "highlights"
    notes: List[str] = field(default_factory=list)

    @property
    def drop_frame(self) -> bool:
        return self.fps in DROP_FRAME_RATES

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.cuts)


def _round(x: Fraction) -> int:
    """Nearest integer, halves up (no banker's rounding)."""
    return math.floor(Fraction(x) + Fraction(1, 2))


def _frac(seconds) -> Fraction:
    return Fraction(seconds).limit_denominator(10**9) if isinstance(seconds, float) \
        else Fraction(seconds)


# ---- media -------------------------------------------------------------------------------------

def probe(path) -> Media:
    """A media file's frame rate, video start, size, duration and timecode, with PyAV."""
    import av

    from highlightsense.operators.sources.decode import is_cover_art

    with av.open(str(path)) as c:
        video = next((s for s in c.streams.video if not is_cover_art(s)), None)
        audio = c.streams.audio[0] if c.streams.audio else None
        duration = float(c.duration / 1_000_000) if c.duration else 0.0
        tc = (video.metadata.get("timecode") if video is not None else None) \
            or c.metadata.get("timecode")
        kw = {}
        if audio is not None:
            kw.update(audio_rate=audio.codec_context.sample_rate or 48000,
                      audio_channels=audio.codec_context.channels or 2)
        if video is None:
            return Media(str(path), AUDIO_ONLY_FPS, Fraction(0), duration, has_video=False,
                         has_audio=audio is not None, **kw)
        fps = Fraction(video.average_rate or video.guessed_rate or video.base_rate or 30)
        fps = _standard_rate(fps)
        start = _frac(float(video.start_time * video.time_base)) if video.start_time is not None \
            else Fraction(0)
        container_start = c.start_time / 1_000_000 if c.start_time is not None else 0.0
        duration = max(0.0, duration + container_start - float(start))
        return Media(str(path), fps, start, duration, has_video=True,
                     has_audio=audio is not None, width=video.codec_context.width or 1920,
                     height=video.codec_context.height or 1080, timecode=tc or None, **kw)


def _standard_rate(fps: Fraction) -> Fraction:
    """23.976, 29.97 and 59.94 as their exact NTSC fractions (a mean rate can be a hair off)."""
    for ntsc in (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001)):
        if abs(fps - ntsc) < Fraction(1, 500):
            return ntsc
    if abs(fps - round(fps)) < Fraction(1, 500):
        return Fraction(round(fps))
    return fps


def media_record(media: Media) -> dict:
    """What highlights.json records of the source's video: its frame rate (exact, as
    "30000/1001"), where its video starts, its size and timecode; null rate for audio-only."""
    return {"frame_rate": str(media.fps) if media.has_video else None,
            "fps": round(float(media.fps), 5) if media.has_video else None,
            "video_start_sec": float(media.start_sec), "width": media.width,
            "height": media.height, "timecode": media.timecode}


def media_from_record(path: str, record: dict) -> Media:
    """The source as highlights.json recorded it (when the file itself is not at hand)."""
    video = record.get("video") or {}
    rate = video.get("frame_rate")
    return Media(path, Fraction(rate) if rate else AUDIO_ONLY_FPS,
                 _frac(video.get("video_start_sec") or 0.0), record.get("duration_sec") or 0.0,
                 has_video=bool(rate), width=video.get("width") or 1920,
                 height=video.get("height") or 1080, timecode=video.get("timecode"))


# ---- the plan ----------------------------------------------------------------------------------

def plan(rows: Sequence[dict], source: Media, origin_sec: float = 0.0, order: str = "rank",
         clips: Optional[Dict[int, Media]] = None, name: str = "highlights") -> Plan:
    """The cuts of the highlight rows (final_clips_metadata's), against the source, or against
    each rank's clip file (`clips`: rank -> its Media; the row's clip_start_sec is where that
    file begins in stream time)."""
    rows = sorted(rows, key=(lambda r: r["start_sec"]) if order == "time"
                  else (lambda r: r["rank"]))
    cuts = []
    for r in rows:
        if clips is None:
            media, zero = source, _frac(origin_sec)  # stream time -> container time
        else:
            media = clips[r["rank"]]
            zero = -_frac(float(r["clip_start_sec"]))  # the clip's container 0 is its start
        a, b = media.frame(zero + _frac(r["start_sec"])), media.frame(zero + _frac(r["end_sec"]))
        a = max(0, a)
        if media.frames:
            b = min(b, media.frames)
        b = max(b, a + 1)
        peak = r.get("peak_sec")
        p = None
        if peak not in (None, "") and not math.isnan(float(peak)):
            p = min(max(media.frame(zero + _frac(float(peak))), a), b - 1)
        cuts.append(Cut(int(r["rank"]), float(r["confidence"]), media, a, b, p,
                        float(r["start_sec"]), float(r["end_sec"])))
    notes = []
    if not source.has_video:
        notes.append("the source has no video: the timeline runs at 30 fps")
    return Plan(source.fps, cuts, source, name, notes)


# ---- OpenTimelineIO ----------------------------------------------------------------------------

def to_otio(p: Plan, for_mlt: bool = False):
    """The plan as an OTIO Timeline: one track (video, or audio for audio-only media), a clip
    per cut named with its rank and score, a marker at its peak. Source frames are counted from
    the media's starting timecode and media are file:// URLs; for_mlt: frames from the file's
    first frame and plain paths, as MLT's producers take them."""
    import opentimelineio as otio

    rate = float(p.fps)
    rt = otio.opentime.RationalTime
    tl = otio.schema.Timeline(name=p.name)
    tl.global_start_time = rt(0, rate)
    kind = otio.schema.TrackKind.Video if p.source.has_video else otio.schema.TrackKind.Audio
    track = otio.schema.Track(name="V1" if p.source.has_video else "A1", kind=kind)
    tl.tracks.append(track)
    for c in p.cuts:
        tc = 0 if for_mlt else c.media.tc_frames
        ref = otio.schema.ExternalReference(
            target_url=c.media.path if for_mlt else _url(c.media.path),
            available_range=otio.opentime.TimeRange(rt(tc, rate),
                                                    rt(max(c.media.frames, c.src_out), rate)))
        clip = otio.schema.Clip(
            name=c.name, media_reference=ref,
            source_range=otio.opentime.TimeRange(rt(tc + c.src_in, rate), rt(c.frames, rate)),
            metadata={"highlightsense": {"rank": c.rank, "confidence": c.confidence,
                                         "start_sec": c.start_sec, "end_sec": c.end_sec}})
        if c.peak is not None:
            clip.markers.append(otio.schema.Marker(
                name=f"peak #{c.rank}", color=otio.schema.MarkerColor.RED,
                marked_range=otio.opentime.TimeRange(rt(tc + c.peak, rate), rt(0, rate))))
        track.append(clip)
    return tl


def _url(path: str) -> str:
    if "://" in path:
        return path
    return "file://" + quote(os.path.abspath(path))


def to_otio_json(p: Plan) -> str:
    import opentimelineio as otio

    return otio.adapters.write_to_string(to_otio(p), adapter_name="otio_json")


def to_fcp7xml(p: Plan) -> str:
    import opentimelineio as otio

    return otio.adapters.write_to_string(to_otio(p), adapter_name="fcp_xml")


def to_edl(p: Plan) -> str:
    import opentimelineio as otio

    return otio.adapters.write_to_string(to_otio(p), adapter_name="cmx_3600")


def to_mlt(p: Plan) -> str:
    """MLT XML (Shotcut, Kdenlive, melt) from the OTIO mlt adapter, frames counted from each
    file's first frame, with the profile of the source and the peaks as markers."""
    import opentimelineio as otio

    fps = p.fps
    src = p.source
    text = otio.adapters.write_to_string(
        to_otio(p, for_mlt=True), adapter_name="mlt_xml",
        frame_rate_num=str(fps.numerator), frame_rate_den=str(fps.denominator),
        width=str(src.width), height=str(src.height), progressive="1",
        sample_aspect_num="1", sample_aspect_den="1",
        display_aspect_num=str(src.width), display_aspect_den=str(src.height))
    root = ET.fromstring(text)
    tractor = root.find("tractor")
    markers = ET.Element("property", name="shotcut:markers")
    guides = []
    at = 0
    for i, c in enumerate(p.cuts):
        if c.peak is not None:
            pos = at + c.peak - c.src_in
            m = ET.SubElement(markers, "properties", name=str(len(guides)))
            for key, value in (("text", f"peak {c.name}"), ("start", _clock(pos, fps)),
                               ("end", _clock(pos, fps)), ("color", "#ff0000")):
                ET.SubElement(m, "property", name=key).text = value
            guides.append({"comment": f"peak {c.name}", "pos": pos, "type": 0})
        at += c.frames
    tractor.insert(0, markers)
    kd = ET.Element("property", name="kdenlive:guides")
    kd.text = json.dumps(guides)
    tractor.insert(0, kd)
    ET.indent(root)
    # melt 7.12 crashes on white space inside a property that holds properties: none there.
    for el in markers.iter():
        if len(el):
            el.text = None
        if el is not markers:
            el.tail = None
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _clock(frame: int, fps: Fraction) -> str:
    """MLT's clock time of a frame, HH:MM:SS.mmm (Shotcut's marker times)."""
    ms = _round(Fraction(frame) / fps * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


# ---- FCPXML ------------------------------------------------------------------------------------

def _t(frames: int, fps: Fraction) -> str:
    """A time as FCPXML writes it: a rational number of seconds, a whole number of frames."""
    value = Fraction(frames) / fps
    if value.denominator == 1:
        return f"{value.numerator}s"
    # Keep the frame duration's denominator (1001/30000s style), as Final Cut writes times.
    den = fps.numerator
    num = frames * fps.denominator
    g = math.gcd(num, den)
    if den // g == 1:
        return f"{num // g}s"
    return f"{num}/{den}s"


def to_fcpxml(p: Plan, version: str = "1.9") -> str:
    """FCPXML (Final Cut Pro, DaVinci Resolve) with rational times: one asset per media file,
    the cuts as asset-clips on the project's spine, a marker at each peak (in the clip's source
    time, as FCPXML places a clip's children)."""
    fps = p.fps
    tc_format = "DF" if p.drop_frame else "NDF"
    root = ET.Element("fcpxml", version=version)
    resources = ET.SubElement(root, "resources")
    fmt_attrs = {"id": "r1", "frameDuration": _t(1, fps), "width": str(p.source.width),
                 "height": str(p.source.height)}
    ET.SubElement(resources, "format", fmt_attrs)
    assets = {}
    for c in p.cuts:
        if c.media.path in assets:
            continue
        m = c.media
        aid = f"r{len(assets) + 2}"
        asset = ET.SubElement(resources, "asset", {
            "id": aid, "name": Path(m.path).name,
            "start": _t(m.tc_frames, fps), "duration": _t(max(m.frames, c.src_out), fps),
            "hasVideo": "1" if m.has_video else "0", "format": "r1",
            "hasAudio": "1" if m.has_audio else "0", "audioSources": "1",
            "audioChannels": str(m.audio_channels), "audioRate": str(m.audio_rate)})
        ET.SubElement(asset, "media-rep", kind="original-media", src=_url(m.path))
        assets[m.path] = aid
    library = ET.SubElement(root, "library")
    event = ET.SubElement(library, "event", name="HighlightSense")
    project = ET.SubElement(event, "project", name=p.name)
    seq = ET.SubElement(project, "sequence", {
        "format": "r1", "duration": _t(p.frames, fps), "tcStart": "0s", "tcFormat": tc_format,
        "audioLayout": "stereo", "audioRate": "48k"})
    spine = ET.SubElement(seq, "spine")
    at = 0
    for c in p.cuts:
        tc = c.media.tc_frames
        clip = ET.SubElement(spine, "asset-clip", {
            "ref": assets[c.media.path], "name": c.name, "offset": _t(at, fps),
            "start": _t(tc + c.src_in, fps), "duration": _t(c.frames, fps),
            "tcFormat": tc_format})
        if not c.media.has_video:
            clip.set("audioRole", "dialogue")
        if c.peak is not None:
            ET.SubElement(clip, "marker", start=_t(tc + c.peak, fps), duration=_t(1, fps),
                          value=f"peak {c.name}")
        at += c.frames
    ET.indent(root)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n'
            + ET.tostring(root, "unicode") + "\n")


# ---- chapters and LosslessCut ------------------------------------------------------------------

def _yt(seconds: int, hours: bool) -> str:
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if hours else f"{m:02d}:{s:02d}"


def to_chapters(p: Plan) -> str:
    """YouTube chapters of the exported timeline (the video an editor renders from it): one
    line per cut, "MM:SS #1 score 0.873", the first at 00:00. Refused, saying why, when the cuts
    cannot make chapters YouTube accepts (at least 3, each at least 10 s)."""
    if len(p.cuts) < CHAPTERS_MIN:
        raise HighlightSenseError(
            f"{len(p.cuts)} highlight(s) cannot make YouTube chapters: YouTube needs at least "
            f"{CHAPTERS_MIN}, each at least {CHAPTER_MIN_SEC} s long")
    total = Fraction(p.frames) / p.fps
    starts, at = [], 0
    for c in p.cuts:
        starts.append(_round(Fraction(at) / p.fps))
        at += c.frames
    ends = starts[1:] + [math.floor(total)]
    short = [(c, e - s) for c, s, e in zip(p.cuts, starts, ends) if e - s < CHAPTER_MIN_SEC]
    if short:
        c, length = short[0]
        raise HighlightSenseError(
            f"highlight {c.name} would be a {length} s chapter: YouTube chapters must each be "
            f"at least {CHAPTER_MIN_SEC} s long")
    hours = total >= 3600
    return "".join(f"{_yt(s, hours)} {c.name}\n" for c, s in zip(p.cuts, starts))


def to_csv_segments(p: Plan) -> str:
    """LosslessCut's segment CSV: start,end,label per cut, seconds in the source file (its
    editor time), no header."""
    if any(c.media.path != p.source.path for c in p.cuts):
        raise HighlightSenseError("csv-segments marks segments of one file: export it with "
                                  "--media source")
    lines = []
    for c in p.cuts:
        a, b = Fraction(c.src_in) / p.fps, Fraction(c.src_out) / p.fps
        lines.append(f"{float(a):.6f},{float(b):.6f},{c.name}\n")
    return "".join(lines)


WRITERS = {"fcpxml": to_fcpxml, "fcp7xml": to_fcp7xml, "edl": to_edl, "otio": to_otio_json,
           "mlt": to_mlt, "chapters": to_chapters, "csv-segments": to_csv_segments}


def render(p: Plan, formats: Sequence[str]) -> Dict[str, str]:
    """Each format's text; a format that cannot be made raises before anything is written."""
    return {f: WRITERS[f](p) for f in formats}


def parse_formats(text: str) -> List[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise HighlightSenseError(f"unknown export format {', '.join(bad) or repr(text)}: give "
                                  f"one or more of {', '.join(FORMATS)}, comma-separated")
    return list(dict.fromkeys(formats))


# ---- a finished run's export -------------------------------------------------------------------

@dataclass
class Exported:
    paths: Dict[str, Path]  # format: file written
    count: int  # highlights on the timeline
    notes: List[str]


def export_run(out_dir, formats: Sequence[str], to=None, order: Optional[str] = None,
               media: str = "source", all_: bool = False) -> Exported:
    """Write the chosen highlights of the finished run in out_dir in each format. One format:
    `to` is the file (default out_dir/timeline.<ext>; an existing folder gets timeline.<ext>);
    several: `to` is a folder (default out_dir) holding timeline.<ext> per format. The
    review's dropped highlights are left out unless all_. A URL source exports against the
    clip files (editors cannot open HLS)."""
    from highlightsense.engine.files import write_text
    from highlightsense.operators.sinks import tables
    from highlightsense.operators.sinks.decisions import kept_ranks
    from highlightsense.operators.sources.resolve import is_url

    out_dir = Path(out_dir)
    if not (out_dir / tables.SUMMARY_JSON).exists():
        raise HighlightSenseError(f"{out_dir} holds no finished run (no {tables.SUMMARY_JSON}); "
                                  f"run `highlightsense detect INPUT --out {out_dir}` first")
    record = tables.read_summary(out_dir)
    rows = record.get("highlights", [])
    notes = []
    if not all_:
        kept = kept_ranks(out_dir, [r["rank"] for r in rows])
        if kept is not None:
            notes.append(f"{len(kept)} of {len(rows)} highlights kept by the review "
                         f"(--all exports every one)")
            rows = [r for r in rows if r["rank"] in kept]
    if not rows:
        raise HighlightSenseError(f"no highlights to export from {out_dir}")
    source_path = record["source"]
    if is_url(source_path) and media == "source":
        media = "clips"
        notes.append("the source is a URL, which editors cannot open: exported against the clips")
    if os.path.exists(source_path):
        source = probe(source_path)
    else:
        source = media_from_record(source_path, record)
        if media == "source":
            notes.append(f"the source {source_path} is not here; the timeline points at it")
    clips = None
    if media == "clips":
        missing = [r["rank"] for r in rows if not r.get("clip_path")
                   or not os.path.exists(r["clip_path"])]
        if missing:
            raise HighlightSenseError(
                f"--media clips needs the clip files, and highlight(s) {missing} have none; "
                f"run `highlightsense select {out_dir} --clips` first")
        clips = {r["rank"]: probe(r["clip_path"]) for r in rows}
    order = order or record.get("settings", {}).get("order", "rank")
    p = plan(rows, source, record.get("origin_sec") or 0.0, order, clips,
             name=f"{Path(source_path).stem} highlights")
    notes += p.notes
    texts = render(p, formats)
    if len(formats) == 1 and not (to and Path(to).is_dir()):
        paths = {formats[0]: Path(to) if to else out_dir / f"timeline{FORMATS[formats[0]]}"}
    else:
        folder = Path(to) if to else out_dir
        folder.mkdir(parents=True, exist_ok=True)
        paths = {f: folder / f"timeline{FORMATS[f]}" for f in formats}
    for f, path in paths.items():
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, texts[f])
    return Exported(paths, len(p.cuts), notes)


def refresh_exports(out_dir) -> None:
    """After a new selection in out_dir, the timelines an earlier export left there
    (timeline.<ext>) are written again from it, so none describes an old selection; one that
    the new selection cannot make (too few highlights for chapters, say) is removed, saying so."""
    import logging

    log = logging.getLogger("highlightsense")
    out_dir = Path(out_dir)
    for fmt, ext in FORMATS.items():
        path = out_dir / f"timeline{ext}"
        if not path.is_file() or path.is_symlink():
            continue
        try:
            export_run(out_dir, [fmt], to=path)
            log.info("%s: %s rewritten for this selection", fmt, path)
        except HighlightSenseError as e:
            path.unlink()
            log.warning("%s: removed %s, which this selection cannot make: %s", fmt, path, e)
