"""The run directory's metrics log: what MetricsLog writes, read_metrics reads back, and
find_metrics_file finds from a checkpoint (OUT/last -> OUT/step-N)."""

import json
import os

from univae import rundir


def test_metrics_log_appends_one_flushed_json_row_per_record(tmp_path):
    log = rundir.MetricsLog(str(tmp_path))
    log.record({"step": 20, "loss": 3.5, "note": "零"})
    # flushed at once: a reader (or a kill) sees the row before the log is closed
    first = (tmp_path / rundir.METRICS_FILE).read_text(encoding="utf-8")
    assert first == '{"step": 20, "loss": 3.5, "note": "零"}\n'
    log.record({"step": 20, "split": "val", "ce": 2.0})
    log.close()
    again = rundir.MetricsLog(str(tmp_path))  # a resumed run appends
    again.record({"step": 40, "loss": 3.0})
    again.close()
    rows = [json.loads(line) for line in (tmp_path / rundir.METRICS_FILE).read_text(encoding="utf-8").splitlines()]
    assert [(r["step"], r.get("split")) for r in rows] == [(20, None), (20, "val"), (40, None)]


def test_metrics_log_without_a_directory_writes_nothing(tmp_path):
    log = rundir.MetricsLog()  # what every rank but 0 holds
    log.record({"step": 1, "loss": 1.0})
    log.close()
    assert os.listdir(tmp_path) == []


def test_read_metrics_keeps_the_last_row_per_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "loss": 3}\n{"step": 2, "loss": 2}\n{"step": 1, "loss": 9}\n{"step": 2, "split": "val", "ce": 1}\ncut{\n',
        encoding="utf-8",
    )
    train, val = rundir.read_metrics(str(path))
    assert [(r["step"], r["loss"]) for r in train] == [(1, 9), (2, 2)]
    assert [(r["step"], r["ce"]) for r in val] == [(2, 1)]


def test_find_metrics_file_from_a_checkpoint_or_its_last_link(tmp_path):
    (tmp_path / "step-40").mkdir()
    os.symlink("step-40", tmp_path / "last")
    assert rundir.find_metrics_file(str(tmp_path / "last")) is None
    rundir.MetricsLog(str(tmp_path)).close()
    expected = str(tmp_path / rundir.METRICS_FILE)
    assert rundir.find_metrics_file(str(tmp_path / "last")) == expected
    assert rundir.find_metrics_file(str(tmp_path / "step-40")) == expected


class _Weights:
    """What a checkpoint saves: anything with save_pretrained(directory)."""

    def __init__(self, value):
        self.value = value

    def save_pretrained(self, directory):
        os.makedirs(directory)
        with open(os.path.join(directory, "weights.txt"), "w") as f:
            f.write(str(self.value))


def test_checkpointer_saves_moves_last_and_keeps_the_newest(tmp_path):
    lines = []
    saver = rundir.Checkpointer(str(tmp_path), {"lr": 0.1}, keep_last=2, log=lines.append)
    for step in (10, 20, 30):
        saver.save(step, _Weights(step), {"step": step, "optimizer": {}, "data": {}, "rng": {}})
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("step-")) == ["step-20", "step-30"]
    assert os.path.realpath(tmp_path / "last") == str(tmp_path / "step-30")
    assert (tmp_path / "last" / "weights.txt").read_text() == "30"
    state, args = rundir.load_training_state(str(tmp_path / "last"))
    assert state["step"] == 30 and args == {"lr": 0.1}
    assert lines == [
        f"saved {tmp_path}/step-10",
        f"saved {tmp_path}/step-20",
        f"saved {tmp_path}/step-30",
        f"removed {tmp_path}/step-10 (--keep-last 2)",
    ]


def test_checkpointer_of_another_rank_writes_nothing(tmp_path):
    rundir.Checkpointer(str(tmp_path), {}, master=False).save(10, _Weights(10), {})
    assert os.listdir(tmp_path) == []
