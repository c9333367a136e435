"""Stage markers left broken by a kill: an unreadable ``done.json`` means "not done" (with a warning naming it), an
empty or dangling ``last_checkpoint`` is pointed at the newest checkpoint or removed."""
import json
import logging
import os

from plugins.engine.stages import read_done, repair_last_checkpoint, write_done


def test_done_record_round_trip_and_unreadable_records(tmp_path, caplog):
    write_done(str(tmp_path), {"stage": "s", "metrics": {"mAP": 1.0}})
    assert read_done(str(tmp_path)) == {"stage": "s", "metrics": {"mAP": 1.0}}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    for broken in ("", "{\"stage\": ", "[1, 2]", "{\"stage\": \"s\"}"):
        (tmp_path / "done.json").write_text(broken)
        with caplog.at_level(logging.WARNING, logger="fastreid"):
            assert read_done(str(tmp_path)) is None
        assert str(tmp_path / "done.json") in caplog.text
        caplog.clear()
    assert read_done(str(tmp_path / "missing")) is None


def test_dangling_last_checkpoint_is_repaired(tmp_path, caplog):
    marker = tmp_path / "last_checkpoint"
    marker.write_text("model_0009.pth")
    (tmp_path / "model_0009.pth").write_bytes(b"x")
    repair_last_checkpoint(str(tmp_path))
    assert marker.read_text() == "model_0009.pth"  # valid: untouched
    marker.write_text("")  # killed while fast-reid wrote it
    (tmp_path / "model_0004.pth").write_bytes(b"x")
    os.utime(tmp_path / "model_0004.pth", (1, 1))  # older than model_0009
    with caplog.at_level(logging.WARNING, logger="fastreid"):
        repair_last_checkpoint(str(tmp_path))
    assert marker.read_text() == "model_0009.pth" and str(marker) in caplog.text
    for p in tmp_path.glob("model_*.pth"):
        p.unlink()
    marker.write_text("model_0009.pth")
    repair_last_checkpoint(str(tmp_path))
    assert not marker.exists()  # nothing to resume from: the stage starts over
    repair_last_checkpoint(str(tmp_path / "absent"))  # no folder, no marker: nothing to do


def test_write_done_is_atomic(tmp_path, monkeypatch):
    """A kill inside json.dump leaves the previous record (or none), never a half-written one."""
    write_done(str(tmp_path), {"stage": "s", "metrics": {"mAP": 1.0}})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", killed)
    try:
        write_done(str(tmp_path), {"stage": "s", "metrics": {"mAP": 2.0}})
    except KeyboardInterrupt:
        pass
    assert read_done(str(tmp_path)) == {"stage": "s", "metrics": {"mAP": 1.0}}
