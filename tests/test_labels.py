"""Labels: labels.csv, Twitch Helix clips, clip folders; their checks; and the window rule."""
import json
import logging

import pytest

from highlightsense.engine.labels import (LabelError, check_within, make_label, match_sources,
                                          read_clip_folders, read_labels_csv, read_twitch_clips,
                                          window_label)


def write_csv(path, rows, header="source,start_sec,end_sec,label,note"):
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def test_labels_csv_is_read_with_its_notes(tmp_path):
    path = write_csv(tmp_path / "labels.csv", ["/v/a.mp4,10,20,1,clutch", "/v/a.mp4,40,50,0,",
                                               "https://twitch.tv/videos/1,5.5,9,1,"])
    labels = read_labels_csv(path)
    assert [(x.source, x.start_sec, x.end_sec, x.label, x.note) for x in labels] == [
        ("/v/a.mp4", 10.0, 20.0, 1, "clutch"), ("/v/a.mp4", 40.0, 50.0, 0, ""),
        ("https://twitch.tv/videos/1", 5.5, 9.0, 1, "")]
    assert labels[1].where == "labels.csv line 3"


def test_note_column_is_optional(tmp_path):
    path = write_csv(tmp_path / "l.csv", ["a.mp4,1,2,1"], header="source,start_sec,end_sec,label")
    assert read_labels_csv(path)[0].note == ""


@pytest.mark.parametrize("row, says", [
    ("a.mp4,20,10,1,", "line 2: end_sec 10 is not after start_sec 20"),
    ("a.mp4,ten,20,1,", "line 2: start_sec 'ten' and end_sec '20' must be numbers"),
    ("a.mp4,1,2,yes,", "line 2: label 'yes' must be 1 (a highlight) or 0 (not)"),
    (",1,2,1,", "line 2: no source"),
    ("a.mp4,-1,2,1,", "line 2: times must be finite and not negative"),
])
def test_bad_rows_are_one_line_naming_the_row(tmp_path, row, says):
    with pytest.raises(LabelError) as e:
        read_labels_csv(write_csv(tmp_path / "labels.csv", [row]))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_span_labelled_both_1_and_0_names_both_rows(tmp_path):
    path = write_csv(tmp_path / "labels.csv", ["a.mp4,10,20,1,", "b.mp4,15,25,0,",
                                               "a.mp4,18,30,0,"])
    with pytest.raises(LabelError, match=r"labels.csv line 4: 18-30 s of a.mp4 is labelled 0, "
                                         r"but labels.csv line 2 labels 10-20 s of it 1"):
        read_labels_csv(path)


def test_missing_columns_and_missing_file(tmp_path):
    with pytest.raises(LabelError, match="lacks the columns end_sec, label"):
        read_labels_csv(write_csv(tmp_path / "l.csv", ["a,1"], header="source,start_sec"))
    with pytest.raises(LabelError, match="cannot read labels"):
        read_labels_csv(tmp_path / "none.csv")


def test_twitch_clips_are_weak_positives_of_the_vod(tmp_path, caplog):
    path = tmp_path / "clips.json"
    path.write_text(json.dumps({"data": [
        {"id": "A", "title": "ace", "vod_offset": 120, "duration": 29.9},
        {"id": "B", "title": "", "vod_offset": None, "duration": 10},
        {"id": "C", "vod_offset": 3600, "duration": 60}], "pagination": {}}))
    with caplog.at_level(logging.WARNING, "highlightsense"):
        labels = read_twitch_clips(path, "vod.mp4")
    assert [(x.source, x.start_sec, x.end_sec, x.label, x.note) for x in labels] == [
        ("vod.mp4", 120.0, 149.9, 1, "ace"), ("vod.mp4", 3600.0, 3660.0, 1, "C")]
    assert "1 clip without a vod_offset skipped" in caplog.text
    path.write_text('{"clips": []}')
    with pytest.raises(LabelError, match='no "data" list'):
        read_twitch_clips(path, "vod.mp4")


def test_clip_folders_label_each_clip_whole(tmp_path):
    for name in ("pos/a.m4a", "pos/b.m4a", "neg/c.m4a"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    lengths = {"a.m4a": 12.0, "b.m4a": 31.5, "c.m4a": 20.0}
    labels = read_clip_folders(tmp_path / "pos", tmp_path / "neg",
                               lambda p: lengths[p.rsplit("/", 1)[-1]])
    assert [(x.source.rsplit("/", 1)[-1], x.start_sec, x.end_sec, x.label) for x in labels] == [
        ("a.m4a", 0.0, 12.0, 1), ("b.m4a", 0.0, 31.5, 1), ("c.m4a", 0.0, 20.0, 0)]
    with pytest.raises(LabelError, match="is not a folder"):
        read_clip_folders(tmp_path / "nope", None, lambda p: 1.0)


def test_times_past_the_media_name_the_row():
    labels = [make_label("a.mp4", 10, 20, 1, where="labels.csv line 2"),
              make_label("a.mp4", 95, 130, 1, where="labels.csv line 3")]
    check_within(labels[:1], "a.mp4", 100.0)
    with pytest.raises(LabelError, match=r"labels.csv line 3: 95-130 s is past the end of "
                                         r"a.mp4 \(100.0 s long\)"):
        check_within(labels, "a.mp4", 100.0)


def test_sources_match_by_path_or_url_then_by_unique_file_name(tmp_path, caplog):
    runs = ["/data/vods/a.mp4", "/data/other/b.mp4", "https://twitch.tv/videos/7"]
    labels = [make_label("/data/vods/a.mp4", 1, 2, 1, where="r2"),
              make_label("https://twitch.tv/videos/7", 1, 2, 1, where="r3"),
              make_label("b.mp4", 1, 2, 1, where="r4")]
    with caplog.at_level(logging.WARNING, "highlightsense"):
        grouped = match_sources(labels, runs)
    assert [len(grouped[r]) for r in runs] == [1, 1, 1]
    assert "labels of b.mp4 matched to /data/other/b.mp4 by file name" in caplog.text
    with pytest.raises(LabelError, match="r9: unknown source c.mp4"):
        match_sources([make_label("c.mp4", 1, 2, 1, where="r9")], runs)
    with pytest.raises(LabelError, match="matches several by file name"):
        match_sources([make_label("a.mp4", 1, 2, 1, where="r9")], runs + ["/x/a.mp4"])


def test_window_rule():
    pos = make_label("v", 100, 110, 1)  # a 10-s positive
    neg = make_label("v", 200, 260, 0)
    labels = [pos, neg]
    # Window 30 s: positive when the overlap is at least half the label (5 s) or half the
    # window (15 s), whichever is less: 5 s here.
    assert window_label(80, 110, labels) == 1  # holds all 10 s
    assert window_label(75, 105, labels) == 1  # 5 s: exactly half the label
    assert window_label(74, 104, labels) is None  # 4 s: touches it, left out
    assert window_label(0, 30, labels) == 0  # nothing: a negative by default
    assert window_label(0, 30, labels, "labelled") is None  # ... not with labelled negatives
    assert window_label(210, 240, labels, "labelled") == 0  # inside the label-0 span
    long = make_label("v", 0, 100, 1)  # a positive longer than the window
    assert window_label(40, 70, [long]) == 1
    assert window_label(86, 116, [long]) is None  # 14 s of 30: under half the window
