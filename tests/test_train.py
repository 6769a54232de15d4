"""train.py end to end on the debug preset: exact resume, errors, HF init, kill safety, torchrun."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import train
import univae

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = [
    "今天天气很好",
    "我喜欢这本书",
    "酒店的服务很周到",
    "房间太小了",
    "价格便宜质量不错",
    "物流速度很快",
    "这个手机的屏幕很清楚",
    "味道一般般",
    "下次还会再来",
    "不推荐购买",
    "包装很精美",
    "快递员态度很好",
    "电池续航时间太短",
    "书的内容很有意思",
    "早餐种类比较少",
    "位置很方便交通便利",
    "声音有点大",
    "整体感觉还可以",
    "性价比很高",
    "客服回复很及时",
    "颜色和图片一样",
    "尺寸偏小",
    "孩子很喜欢",
    "用了一个月就坏了",
    "质量太差了",
    "非常满意的一次购物",
    "环境安静适合休息",
    "设计很人性化",
] * 2


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"{s}{i % 7}" for i, s in enumerate(SENTENCES)) + "\n", encoding="utf-8")
    return str(path)


def base_args(corpus, out, *extra):
    return [
        "--preset",
        "debug",
        "--corpus",
        corpus,
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        "--eval-every",
        "1000",
        "--eval-sentences",
        "4",
        "--log-every",
        "5",
        "--warmup",
        "5",
        *extra,
    ]


def test_resume_is_exact(corpus, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    train.main(base_args(corpus, a, "--max-steps", "40", "--save-every", "20"))
    train.main(base_args(corpus, b, "--max-steps", "40", "--resume", str(a / "step-20")))
    wa, wb = load_file(a / "step-40" / "model.safetensors"), load_file(b / "step-40" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # and the run did learn something: weights moved away from step 20
    w20 = load_file(a / "step-20" / "model.safetensors")
    assert not torch.equal(w20["transformer.layers.0.qkv.weight"], wa["transformer.layers.0.qkv.weight"])
    assert os.path.realpath(a / "last") == str(a / "step-40")
    rows = [json.loads(l) for l in open(a / "metrics.jsonl", encoding="utf-8")]
    train_rows = [r for r in rows if "split" not in r]
    assert {"step", "loss", "ce", "kl", "lr", "tokens_per_s"} <= set(train_rows[0])
    val = [r for r in rows if r.get("split") == "val"][-1]
    assert {"ce", "bits_per_char", "exact_match", "char_f1"} <= set(val)
    saved = json.load(open(a / "last" / "train_args.json", encoding="utf-8"))
    assert saved["corpus"] == corpus and saved["split_seed"] == 0
    model = univae.UniVAE.from_pretrained(str(a / "last"))
    assert model.tokenizer.token_to_id("天") is not None
    # the sampling prior is fitted once, at the end, to the final weights' codes (the 26 train sentences: 28
    # distinct lines less val and test), not in periodic checkpoints
    assert model.fitted_prior is not None and not (a / "step-20" / "prior.safetensors").exists()
    assert model.fitted_prior.info["n_sentences"] == 26 and "train split (seed 0)" in model.fitted_prior.info["source"]


def _error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1]


def test_clear_errors_before_touching_output(corpus, tmp_path, capsys, hf_bert):
    out = tmp_path / "out"
    assert "nothing to resume" in _error(base_args(corpus, out, "--resume"), capsys)
    assert "num_latent_layers" in _error(base_args(corpus, out, "--num-latent-layers", "9"), capsys)
    assert "--kappa: expected a number" in _error(base_args(corpus, out, "--kappa", "16,x"), capsys)
    assert "kappa has 3 values for 2 latent layers" in _error(base_args(corpus, out, "--kappa", "8,16,32"), capsys)
    assert "unknown --preset" in _error(["--preset", "huge", "--out", str(out)], capsys)
    assert "--init-from" in _error(["--init-from", str(hf_bert[0]), "--preset", "small", "--out", str(out)], capsys)
    assert "no config.json" in _error(["--init-from", str(tmp_path), "--out", str(out)], capsys)
    assert "2*maxlen" in _error(["--init-from", str(hf_bert[0]), "--maxlen", "40", "--out", str(out)], capsys)
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert "not empty" in _error(base_args(corpus, out, "--max-steps", "2"), capsys)
    assert (out / "keep.txt").read_text() == "precious"


def test_bad_corpus_lines_reported_with_file_and_line(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": s}, ensure_ascii=False) for s in SENTENCES[:20]]
    lines.insert(3, "{not json")
    lines.insert(7, json.dumps({"other": 1}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    train.main(base_args(str(path), tmp_path / "o", "--max-steps", "2"))
    out = capsys.readouterr().out
    assert f"{path}:4" in out and f"{path}:8" in out
    assert f"{path}:4" in _error(base_args(str(path), tmp_path / "o2", "--max-steps", "2", "--strict"), capsys)


def test_init_from_hf_bert(corpus, tmp_path, hf_bert):
    out = tmp_path / "ft"
    train.main(
        [
            "--init-from",
            str(hf_bert[0]),
            "--corpus",
            corpus,
            "--out",
            str(out),
            "--maxlen",
            "12",
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--eval-sentences",
            "2",
            "--precision",
            "fp32",
        ]
    )
    model = univae.UniVAE.from_pretrained(str(out / "last"))
    assert model.config.num_latent_layers == 2 and model.config.kappa == 32.0 and model.config.z_dim == 16
    args = json.load(open(out / "last" / "train_args.json"))
    assert args["lr"] == 2e-5  # the reference fine-tuning rate


def test_kill_leaves_a_loadable_last(corpus, tmp_path):
    """SIGKILL at arbitrary moments while checkpoints are written every step: last stays loadable."""
    import random

    out = tmp_path / "k"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        *base_args(corpus, out, "--save-every", "1", "--max-steps", "100000"),
    ]
    rng = random.Random(0)
    for attempt in range(2):
        proc = subprocess.Popen(
            cmd + (["--resume"] if attempt else []), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT
        )
        deadline = time.time() + 120
        first = os.path.realpath(out / "last") if attempt else None
        while not (out / "last").exists() or os.path.realpath(out / "last") == first:  # wait for a fresh save
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))  # then kill somewhere in the middle of later saves
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        model = univae.UniVAE.from_pretrained(str(out / "last"))  # complete, loadable
        state = torch.load(out / "last" / "training_state.pt", weights_only=True)
        assert state["step"] >= 1 and isinstance(model, univae.UniVAE)
        assert not any(p.name.startswith("step-") and not (p / "training_state.pt").exists() for p in out.iterdir())


def test_sigterm_saves_last_and_exits_cleanly(corpus, tmp_path):
    out = tmp_path / "t"
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        *base_args(corpus, out, "--save-every", "100000", "--max-steps", "100000"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, text=True)
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size == 0:
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped at step" in stdout and (out / "last" / "model.safetensors").exists()


def test_torchrun_two_cpu_processes(corpus, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29533",
        os.path.join(ROOT, "train.py"),
        *base_args(corpus, out, "--max-steps", "6", "--save-every", "3"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("stopped at step 6") == 1  # only rank 0 logs
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["step"] == 6 and state["rng"]["cpu"].shape[0] == 2
    univae.UniVAE.from_pretrained(str(out / "last"))


def test_gaussian_with_every_remedy_resumes_exactly_and_logs_diagnostics(corpus, tmp_path, capsys):
    """Gaussian latents with annealing, free bits, MDR, word dropout and BoW (content characters on
    the lowest layer, pattern on the top): the objective's state (BoW heads, MDR multiplier) resumes
    exactly, and eval rows carry the collapse diagnostics."""
    val = tmp_path / "val.txt"
    val.write_text("\n".join(SENTENCES[:12]) + "\n", encoding="utf-8")
    a, b = tmp_path / "ga", tmp_path / "gb"
    remedies = [
        "--latent",
        "gaussian",
        "--val",
        str(val),
        "--max-steps",
        "8",
        "--save-every",
        "4",
        "--eval-every",
        "4",
        "--log-every",
        "2",
        "--kl-anneal",
        "cyclical",
        "--kl-cycles",
        "2",
        "--free-bits",
        "0.05",
        "--target-rate",
        "20",
        "--mdr-lr",
        "0.05",
        "--word-dropout",
        "0.3",
        "--bow-weight",
        "0.5",
        "--bow-layers",
        "0,-1",
        "--bow-chars",
        "content,pattern",
    ]
    train.main(base_args(corpus, a, *remedies))
    train.main(base_args(corpus, b, *remedies, "--resume", str(a / "step-4")))
    wa, wb = load_file(a / "step-8" / "model.safetensors"), load_file(b / "step-8" / "model.safetensors")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa = torch.load(a / "step-8" / "training_state.pt", weights_only=True)["objective"]
    sb = torch.load(b / "step-8" / "training_state.pt", weights_only=True)["objective"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sa["mdr_multiplier"] > 0 and "bow.1.weight" in sa  # KL far under 20 nats: the multiplier rose
    rows = [json.loads(l) for l in open(a / "metrics.jsonl", encoding="utf-8")]
    first = next(r for r in rows if r["step"] == 2 and "split" not in r)
    assert first["kl_weight"] == 0.0  # cyclical, 2 cycles of 4 steps: zero for the first 2
    assert {"ce", "kl", "loss", "kl_free_bits", "mdr_multiplier", "bow"} <= set(first)
    val_row = [r for r in rows if r.get("split") == "val"][-1]
    assert {"kl", "kl_per_layer", "mi", "au", "mi_per_layer", "au_per_layer", "kl_per_dim"} <= set(val_row)
    assert 0 <= val_row["au"] <= 16 and len(val_row["kl_per_layer"]) == 2
    model = univae.UniVAE.from_pretrained(str(a / "last"))
    assert model.config.latent == "gaussian"
    # the KL remedies are refused where the KL is a constant
    assert "constant KL" in _error(base_args(corpus, tmp_path / "v", "--free-bits", "0.5"), capsys)


@pytest.mark.parametrize(
    "family",
    [
        ["--latent", "vq", "--codebook-size", "16", "--vq-dead-steps", "3", "--word-dropout", "0.2"],
        [
            "--latent",
            "gmm",
            "--mixture-components",
            "3",
            "--mi-weight",
            "0",
            "--free-bits",
            "0.05",
            "--kl-anneal",
            "linear",
        ],
    ],
)
def test_vq_and_gmm_resume_exactly_and_log_usage(corpus, tmp_path, family, capsys):
    """The codebooks, their EMA statistics and the mixture prior resume exactly (model.safetensors),
    and eval rows carry codebook / component usage."""
    val = tmp_path / "val.txt"
    val.write_text("\n".join(SENTENCES[:12]) + "\n", encoding="utf-8")
    a, b = tmp_path / "a", tmp_path / "b"
    args = [
        *family,
        "--val",
        str(val),
        "--max-steps",
        "8",
        "--save-every",
        "4",
        "--eval-every",
        "4",
        "--log-every",
        "2",
    ]
    train.main(base_args(corpus, a, *args))
    train.main(base_args(corpus, b, *args, "--resume", str(a / "step-4")))
    wa, wb = load_file(a / "step-8" / "model.safetensors"), load_file(b / "step-8" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = [json.loads(l) for l in open(a / "metrics.jsonl", encoding="utf-8")]
    train_row = next(r for r in rows if "split" not in r)
    val_row = [r for r in rows if r.get("split") == "val"][-1]
    model = univae.UniVAE.from_pretrained(str(a / "last"))
    if family[1] == "vq":
        w4 = load_file(a / "step-4" / "model.safetensors")
        assert not torch.equal(w4["family.codebook"], wa["family.codebook"]) and wa["family.restarts"].sum() > 0
        assert "commitment" in train_row and len(val_row["codebook"]["perplexity"]) == 2
        assert 0 < val_row["codebook"]["used_fraction"][0] <= 1
        assert model.config.codebook_size == 16 and model.encode_codes(["今天天气很好"]).shape == (1, 2)
    else:
        assert {"dispersion", "mi_c", "kl_free_bits"} <= set(train_row)
        assert len(val_row["mixture"]["usage_entropy"]) == 2 and "kl_per_dim" in val_row
        assert model.family.prior_mean.shape == (2, 3, 8)
    assert len(model.sample(2)) == 2
    assert "for --latent vq" in _error(base_args(corpus, tmp_path / "x", "--codebook-size", "8"), capsys)
    assert "--latent gmm" in _error(
        base_args(corpus, tmp_path / "y", "--latent", "gaussian", "--mi-weight", "0"), capsys
    )


def _loss_curve(out):
    rows = [json.loads(l) for l in open(out / "metrics.jsonl", encoding="utf-8")]
    return torch.tensor([r["loss"] for r in rows if "split" not in r])


@pytest.mark.parametrize("precision, rtol", [("fp32", 1e-3), ("bf16", 0.05)])
def test_every_cpu_backend_trains_the_same_loss_curve(corpus, tmp_path, precision, rtol):
    """A training run with each backend that can train on CPU (flex cannot: no CPU backward) gives
    eager's loss curve: to float round-off in fp32, within bf16 noise under bf16 autocast."""
    curves = {}
    for attn in ("eager", "sdpa", "split"):
        out = tmp_path / attn
        train.main(
            base_args(corpus, out, "--max-steps", "30", "--log-every", "1", "--attn", attn, "--precision", precision)
        )
        curves[attn] = _loss_curve(out)
    eager = curves["eager"]
    assert len(eager) == 30 and eager[-5:].mean() < eager[:5].mean() - 0.2  # a real curve: it learned
    for attn in ("sdpa", "split"):
        torch.testing.assert_close(curves[attn], eager, rtol=rtol, atol=0, msg=f"{attn} vs eager, {precision}")


def test_architecture_flags_build_that_model_from_scratch(corpus, tmp_path):
    out = tmp_path / "arch"
    train.main(
        base_args(
            corpus,
            out,
            "--max-steps",
            "1",
            "--hidden-size",
            "48",
            "--num-hidden-layers",
            "5",
            "--num-attention-heads",
            "3",
            "--intermediate-size",
            "40",
            "--num-latent-layers",
            "3",
            "--kappa",
            "8,16,32",
        )
    )
    model = univae.UniVAE.from_pretrained(str(out / "last"))
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.latent_layers) == (
        48,
        5,
        3,
        40,
        [2, 3, 4],
    )
    assert c.kappas == [8.0, 16.0, 32.0] and model.family.kappas == (8.0, 16.0, 32.0)


def test_the_demo_redraws_each_latent_layer_in_turn(hf_bert, capsys):
    from univae.edit_dims import layer_span

    model = univae.UniVAE.from_pretrained(str(hf_bert[0]), maxlen=12)
    texts = SENTENCES[:3]
    torch.manual_seed(0)
    train.show(model, texts, n=3)
    lines = capsys.readouterr().out.splitlines()
    torch.manual_seed(0)  # the same calls in the same order: the same draws
    model.reconstruct(texts), model.sample(3)
    reconstruction = model.reconstruct(texts[:1])[0]
    expected = []
    for j in range(model.config.num_latent_layers):
        edits = model.edit(texts[0], layer_span(model, j), n=2)
        expected.append(
            f"  layer {j} (dims {layer_span(model, j)}): "
            + "  |  ".join(("= " if s == reconstruction else "") + s for s in edits)
        )
    start = next(i for i, line in enumerate(lines) if line.startswith(f'edits of "{texts[0]}"'))
    assert lines[start + 1 : start + 1 + len(expected)] == expected and len(expected) == 2


def test_a_collapse_warning_before_the_end_is_qualified(corpus, tmp_path, capsys, monkeypatch):
    """Each evaluation prints collapse_warning's line; one before the last step says it is a
    mid-run reading (a vMF layer quiet at one evaluation can come alive later), the last does not."""
    import univae.trainer

    monkeypatch.setattr(univae.trainer, "collapse_warning", lambda metrics, config, au_delta: "warning: W")
    train.main(base_args(corpus, tmp_path / "o", "--max-steps", "4", "--eval-every", "2"))
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: W")]
    assert warnings == ["warning: W (at step 2; it can still change before the run ends)", "warning: W"]


def test_batch_lengths_round_up_to_few_shapes_where_shapes_cost_memory():
    """Under CPU autocast (oneDNN caches kernels per shape) and --compile a batch's length is
    rounded up to a multiple; in plain fp32 it is the longest sentence's."""
    from univae.training import length_multiple, trim_length

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [length_multiple(False, cpu, torch.bfloat16), length_multiple(False, cpu, None)] == [4, 1]
    assert [length_multiple(True, cpu, None), length_multiple(False, cuda, torch.bfloat16)] == [8, 1]
    assert [trim_length(13, 32, 4), trim_length(13, 32, 1), trim_length(30, 32, 8), trim_length(32, 32, 4)] == [
        16,
        13,
        32,
        32,
    ]
