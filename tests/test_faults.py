"""The faults a run must survive, and the settings it settles before touching anything: corrupt
checkpoint files (one line naming the file, in train.py --resume, sample.py and univae.evaluate),
non-finite steps, one run per --out, a failing disk, --keep-last, and logs a person can read."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from test_train import ROOT, SENTENCES, corpus  # noqa: F401 (corpus is a fixture)
from test_train import base_args as args_for

import sample
import train
import univae
from univae import evaluate as E
from univae import rundir as T
from univae import settings, trainer
from univae.config import BUNDLED_MODEL, BUNDLED_TRAINING, PRESET_TRAINING, SettingsError, TrainConfig, preset
from univae.objective import VAEObjective


def exit_and_err(capsys, argv):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    return e.value.code, capsys.readouterr().err


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


# ----------------------------------------------------------------------------- settle: pure and layered


def test_settle_layers_defaults_recipe_saved_args_and_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the default run fine-tunes the bundled backbone with its measured recipe
    cfg, overrides = settings.resolve({})
    assert cfg.init_from == "bundled" and not cfg.from_scratch and cfg.time_budget == settings.DEFAULT_TIME_BUDGET
    assert cfg.lr == BUNDLED_TRAINING["lr"] and overrides == BUNDLED_MODEL
    assert (cfg.bow_weight, cfg.bow_layers, cfg.bow_chars) == (1.0, "0,-1", "content,pattern")
    cfg, overrides = settings.resolve({"z_dim": 32, "lr": 1e-4})
    assert cfg.lr == 1e-4 and overrides == {**BUNDLED_MODEL, "z_dim": 32}  # a flag wins over the recipe
    # from scratch: --from-scratch, or implied by --preset or an architecture flag
    cfg, overrides = settings.resolve({"from_scratch": True})
    assert cfg.init_from == "" and cfg.lr == PRESET_TRAINING["small"]["lr"] and overrides == {}
    assert cfg.word_dropout == PRESET_TRAINING["small"]["word_dropout"]
    assert (cfg.bow_weight, cfg.bow_layers, cfg.bow_chars) == (1.0, "0,-1", "content,pattern")
    # the recipe's bag of words goes as a whole
    cfg, _ = settings.resolve({"from_scratch": True, "bow_weight": 0.5})
    assert (cfg.bow_weight, cfg.bow_layers, cfg.bow_chars) == (0.5, "0,-1", "content,pattern")
    for given in ({"bow_weight": 0.0}, {"num_latent_layers": 1}, {"from_scratch": True, "num_latent_layers": 1}):
        cfg, _ = settings.resolve(given)
        assert (cfg.bow_weight, cfg.bow_layers, cfg.bow_chars) == (0.0, "", "all"), given
    cfg, _ = settings.resolve({"from_scratch": True, "bow_layers": "-1"})
    assert (cfg.bow_weight, cfg.bow_layers, cfg.bow_chars) == (1.0, "-1", "all")
    cfg, _ = settings.resolve({"preset": "debug", "max_steps": 7})
    assert cfg.init_from == "" and cfg.lr == TrainConfig.lr and cfg.time_budget == 0 and cfg.max_steps == 7
    cfg, _ = settings.resolve({"init_from": "some/dir", "epochs": 1.0})
    assert cfg.lr == TrainConfig.lr and cfg.word_dropout == 0  # no recipe for a user's backbone
    saved = {"lr": 5e-4, "max_steps": 40, "batch_size": 16, "world_size": 2, "resume": None}
    cfg, overrides = settings.resolve({"resume": "last", "batch_size": 8, "z_dim": 4}, saved)
    assert (cfg.lr, cfg.max_steps, cfg.batch_size, cfg.time_budget) == (5e-4, 40, 8, 0)  # the flag wins over saved
    assert overrides == {"z_dim": 4}
    cfg, overrides = settings.resolve({"hidden_size": 96, "num_hidden_layers": 5, "num_latent_layers": 2})
    assert overrides == {"hidden_size": 96, "num_hidden_layers": 5, "num_latent_layers": 2} and cfg.init_from == ""
    assert preset(cfg.preset, **overrides).num_hidden_layers == 5
    for given, message in [
        ({"codebook_size": 8}, "for --latent vq"),
        ({"preset": "huge"}, "unknown --preset"),
        ({"init_from": "x", "preset": "small"}, "contradicts --init-from"),
        ({"init_from": "x", "from_scratch": True}, "contradicts --init-from"),
        ({"batch_size": 0}, "--batch-size"),
        ({"keep_last": -1}, "--keep-last"),
        ({"max_bad_steps": 0}, "--max-bad-steps"),
        ({"precision": "fp16", "device": "cpu"}, "CUDA"),
        ({"init_from": "x", "hidden_size": 64}, "from scratch"),
        ({"resume": "last", "num_hidden_layers": 6}, "from scratch"),
    ]:
        with pytest.raises(SettingsError, match=message.replace("-", r"\-")):
            settings.resolve(given)
    assert os.listdir(tmp_path) == []  # pure: nothing read or written


# ----------------------------------------------------------------------------- corrupt checkpoint files


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = root / "run"
    train.main(args_for(str(corpus), out, "--max-steps", "4", "--save-every", "2"))
    return out


def damaged_copy(run_dir, tmp_path, name, how):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out, symlinks=True)
    path = out / "step-4" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else bytes(len(data)))
    return out, str(path)


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
@pytest.mark.parametrize(
    "name, tools",
    [
        ("model.safetensors", ("train", "sample", "evaluate")),
        ("config.json", ("train", "sample", "evaluate")),
        ("training_state.pt", ("train",)),
    ],
)
def test_a_damaged_checkpoint_file_is_one_line_naming_it(run_dir, tmp_path, capsys, name, tools, how):
    out, path = damaged_copy(run_dir, tmp_path, name, how)
    before = sorted(os.listdir(out))
    for tool in tools:
        if tool == "train":
            code, err = exit_and_err(capsys, ["--out", str(out), "--resume", "--max-steps", "6"])
        elif tool == "sample":
            code, err = sample.main(["--checkpoint", str(out / "last"), "--n", "1"]), capsys.readouterr().err
        else:
            code, err = (
                E.main(["--checkpoint", str(out / "last"), "--out", str(tmp_path / "eval")]),
                capsys.readouterr().err,
            )
        assert code != 0, tool
        lines = err.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and "Traceback" not in err, (tool, err)
    assert sorted(os.listdir(out)) == before  # nothing written, nothing removed


# ----------------------------------------------------------------------------- non-finite steps


def poison(monkeypatch, steps, kind):
    """Make the objective's loss (kind "loss") or only its gradient ("grad": the loss value stays
    finite, d sqrt(x)/dx at 0 is inf) non-finite at the given 0-based steps."""
    forward = VAEObjective.forward

    def poisoned(self, out, step):
        loss, logs = forward(self, out, step)
        if step in steps:
            if kind == "loss":
                loss = loss * float("nan")
            else:
                loss = loss + (out.logits.sum() * 0).abs().sqrt()
        return loss, logs

    monkeypatch.setattr(VAEObjective, "forward", poisoned)


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_a_non_finite_step_is_skipped_and_counted(corpus, tmp_path, monkeypatch, capsys, kind):
    poison(monkeypatch, {3, 4}, kind)  # the 4th and 5th steps
    out = tmp_path / "o"
    train.main(args_for(corpus, out, "--max-steps", "8", "--save-every", "1", "--keep-last", "0"))
    w = {s: weights(out / f"step-{s}") for s in (2, 3, 4, 5, 6)}
    key = "transformer.layers.0.qkv.weight"
    assert torch.equal(w[3][key], w[4][key]) and torch.equal(w[4][key], w[5][key])  # no update at all
    assert not torch.equal(w[2][key], w[3][key]) and not torch.equal(w[5][key], w[6][key])  # updates before and after
    s4 = torch.load(out / "step-4" / "training_state.pt", weights_only=True)
    s3 = torch.load(out / "step-3" / "training_state.pt", weights_only=True)
    assert torch.equal(s4["optimizer"]["state"][0]["exp_avg"], s3["optimizer"]["state"][0]["exp_avg"])
    assert torch.load(out / "last" / "training_state.pt", weights_only=True)["skipped_steps"] == 2
    assert all(torch.isfinite(t).all() for t in weights(out / "last").values())
    stdout = capsys.readouterr().out
    assert "step 5: non-finite loss or gradient" in stdout and "2 non-finite steps skipped" in stdout


def test_non_finite_steps_in_a_row_stop_the_run_without_saving(corpus, tmp_path, monkeypatch, capsys):
    poison(monkeypatch, set(range(5, 100)), "loss")
    out = tmp_path / "o"
    code, err = exit_and_err(
        capsys, args_for(corpus, out, "--max-steps", "50", "--save-every", "5", "--max-bad-steps", "3")
    )
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "3 non-finite steps in a row at step 8" in err and "still step-5" in err
    assert os.path.realpath(out / "last") == str(out / "step-5")
    assert sorted(p for p in os.listdir(out) if p.startswith("step-")) == ["step-5"]
    assert not (out / ".lock").exists()  # released on the way out


def test_non_finite_weights_are_never_saved(corpus, tmp_path, monkeypatch, capsys):
    built, build_model, update, steps = [], trainer.build_model, VAEObjective.update_multiplier, []
    monkeypatch.setattr(trainer, "build_model", lambda *a: built.append(build_model(*a)) or built[-1])

    def corrupting(self, kl):  # runs after each optimiser step
        steps.append(1)
        if len(steps) == 7:  # a weight gone bad after a finite step (e.g. a fused kernel's overflow)
            with torch.no_grad():
                built[0].transformer.layers[0].qkv.weight[0, 0] = float("inf")
        return update(self, kl)

    monkeypatch.setattr(VAEObjective, "update_multiplier", corrupting)
    out = tmp_path / "o"
    code, err = exit_and_err(
        capsys, args_for(corpus, out, "--max-steps", "10", "--save-every", "5", "--max-bad-steps", "100")
    )
    assert code == 1 and "not finite; not saved" in err and len(err.strip().splitlines()) == 1
    assert os.path.realpath(out / "last") == str(out / "step-5")
    assert all(torch.isfinite(t).all() for t in weights(out / "last").values())


# ----------------------------------------------------------------------------- one run per --out


def test_a_live_run_locks_out_and_a_killed_one_leaves_a_stale_lock_that_resume_takes(corpus, tmp_path, capsys):
    out = tmp_path / "live"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        *args_for(corpus, out, "--save-every", "2", "--max-steps", "100000", "--log-every", "1"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while not (out / "last").exists():
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        assert (out / ".lock").read_text().strip() == str(proc.pid)
        for argv in (["--out", str(out), "--resume"], args_for(corpus, out, "--overwrite", "--max-steps", "2")):
            code, err = exit_and_err(capsys, argv)
            assert code == 2 and f"in use by a live run (pid {proc.pid})" in err and len(err.strip().splitlines()) == 1
        assert proc.poll() is None and (out / ".lock").read_text().strip() == str(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / ".lock").exists()  # kill -9 leaves the file behind; its flock died with the process
    step = torch.load(out / "last" / "training_state.pt", weights_only=True)["step"]
    train.main(["--out", str(out), "--resume", "--max-steps", str(step + 2)])
    captured = capsys.readouterr().out
    assert (
        f"left by pid {proc.pid}, which is no longer running" in captured and f"stopped at step {step + 2}" in captured
    )
    assert not (out / ".lock").exists()


# ----------------------------------------------------------------------------- a failing disk


@pytest.mark.parametrize(
    "owner, name", [(torch, "save"), (univae.checkpoint, "save_file")], ids=["training_state.pt", "model.safetensors"]
)
def test_an_io_error_while_saving_keeps_last_at_the_previous_checkpoint(
    corpus, tmp_path, monkeypatch, capsys, owner, name
):
    real, calls = getattr(owner, name), []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the second checkpoint: step-10
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(owner, name, failing)
    out = tmp_path / "o"
    code, err = exit_and_err(capsys, args_for(corpus, out, "--max-steps", "20", "--save-every", "5"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert f"could not save {out}/step-10: the disk is full; {out}/last still points at the complete step-5" in err
    assert os.path.realpath(out / "last") == str(out / "step-5")
    assert sorted(os.listdir(out)) == ["last", "metrics.jsonl", "step-5"]  # no partial step-10, no .tmp, lock released
    univae.UniVAE.from_pretrained(str(out / "last"))


# ----------------------------------------------------------------------------- --keep-last


@pytest.mark.parametrize("keep, expected", [(2, [8, 10]), (0, [2, 4, 6, 8, 10]), (1, [10])])
def test_keep_last_keeps_the_newest_checkpoints(corpus, tmp_path, keep, expected):
    out = tmp_path / f"k{keep}"
    train.main(args_for(corpus, out, "--max-steps", "10", "--save-every", "2", "--keep-last", str(keep)))
    steps = sorted(int(p[5:]) for p in os.listdir(out) if p.startswith("step-"))
    assert steps == expected and os.path.realpath(out / "last") == str(out / "step-10")
    assert not [p for p in os.listdir(out) if p.startswith(".trash") or p.startswith(".tmp")]


def test_prune_never_removes_what_last_points_at(tmp_path):
    for s in (1, 2, 3):
        (tmp_path / f"step-{s}").mkdir()
    (tmp_path / "step-x").mkdir()  # not a checkpoint name: left alone
    (tmp_path / "last").symlink_to("step-1")  # e.g. resumed from an older step into the same --out
    removed = T.prune_checkpoints(str(tmp_path), 1)
    assert sorted(os.listdir(tmp_path)) == ["last", "step-1", "step-3", "step-x"] and removed == [
        str(tmp_path / "step-2")
    ]


# ----------------------------------------------------------------------------- logs


def test_logs_off_a_terminal_are_plain_lines(corpus, tmp_path):
    out = tmp_path / "log"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        *args_for(corpus, out, "--max-steps", "30", "--log-every", "5"),
    ]
    with open(tmp_path / "train.log", "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=300, check=True)
    text = (tmp_path / "train.log").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert "\r" not in text and len(lines) <= 100
    progress = [l for l in lines if l.startswith("step ") and "tok/s" in l]
    assert [l.split()[1] for l in progress] == [f"{s}/30" for s in range(5, 31, 5)]
