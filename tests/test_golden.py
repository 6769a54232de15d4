"""Behaviour kept while code moves: the outputs recorded by tests/golden/record.py before a
restructure (a 40-step fp32 debug-preset run, and each sample.py mode's --json lines on the tiny
checkpoint it left in tests/golden/tiny) must come out the same today. fp32 throughout; the float
tolerances cover the difference between CPU kinds."""

import json
import os

import pytest
import torch
from golden.record import SAMPLE_MODES, TRAIN_FLAGS, corpus_file
from safetensors.torch import load_file

import sample
import train
from univae.report import render_markdown

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
with open(os.path.join(GOLDEN, "golden.json"), encoding="utf-8") as f:
    RECORDED = json.load(f)


def test_training_reproduces_the_recorded_loss_curve_and_weights(tmp_path):
    out = tmp_path / "run"
    train.main(["--corpus", corpus_file(str(tmp_path)), "--out", str(out), *TRAIN_FLAGS])
    rows = [json.loads(line) for line in open(out / "metrics.jsonl", encoding="utf-8") if '"split"' not in line]
    torch.testing.assert_close(
        torch.tensor([r["loss"] for r in rows]), torch.tensor(RECORDED["loss_curve"]), rtol=2e-3, atol=0
    )
    ours, recorded = (
        load_file(out / "last" / "model.safetensors"),
        load_file(os.path.join(GOLDEN, "tiny", "model.safetensors")),
    )
    assert ours.keys() == recorded.keys()
    # Adam turns float noise in near-zero gradients into lr-sized steps, which differ between CPU kinds;
    # a changed computation moves whole tensors, so each is compared by its relative distance
    for k in ours:
        distance = (ours[k] - recorded[k]).norm() / recorded[k].norm().clamp_min(1e-12)
        assert distance < 1e-2, f"{k}: relative distance {distance:.2e} from the recorded weights"


@pytest.mark.parametrize("mode", list(SAMPLE_MODES))
def test_every_sample_mode_gives_the_recorded_lines_on_the_tiny_checkpoint(mode, tmp_path, capsys):
    flags = [corpus_file(str(tmp_path)) if f == "{corpus}" else f for f in SAMPLE_MODES[mode]]
    assert sample.main(["--checkpoint", os.path.join(GOLDEN, "tiny"), "--json", *flags]) in (0, None)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    recorded = RECORDED["sample"][mode]
    assert len(lines) == len(recorded)
    for ours, then in zip(lines, recorded):
        z_ours, z_then = ours.pop("z", None), then.pop("z", None)
        assert ours == then
        if z_then is not None:
            torch.testing.assert_close(torch.tensor(z_ours), torch.tensor(z_then), rtol=1e-4, atol=1e-5)


def test_report_markdown_matches_the_recorded_rendering():
    """report.md rendered from a recorded report.json (python -m univae.evaluate on the tiny checkpoint,
    40 reviews test sentences) is the recorded report.md, line for line."""
    folder = os.path.join(os.path.dirname(__file__), "golden", "report")
    with open(os.path.join(folder, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    with open(os.path.join(folder, "report.md"), encoding="utf-8") as f:
        expected = f.read()
    assert render_markdown(report).splitlines() == expected.splitlines()
