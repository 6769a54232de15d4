"""sample.py on a tiny untrained checkpoint (debug preset), in-process through main(argv):
every mode's output, --json lines, cached == recompute, --replace-dims (on given sentences and on
the checkpoint's own held-out ones), --prior, one-line errors."""

import json
import os
import shutil
import sys

import pytest
import torch

import univae
import univae.generate
import univae.prior
from univae import sample_flags, sample_modes
from univae.data import join, load_sentences, split
from univae.tokenizer import build_tokenizer, char_vocab, encode_texts

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import sample  # noqa: E402  (the CLI at the repo root)

SENTENCES = ["牙龈出血要吃什么药？", "今天天气很好", "我喜欢iphone手机", "这是一个测试句子。", "他在家里看书"]


def _train_until_reconstructed(model, texts, max_steps=1000, check_every=20):
    """Overfit `model` on `texts` until greedy decoding reconstructs every one exactly: the state the
    tests below rely on, verified rather than assumed. Where a fixed number of steps lands differs
    between CPU kinds (bf16/AMX vs AVX-512 float paths), so train to the state, not for a count. The
    decoder reads the posterior mean (sample=False), which converges in ~100 steps for any seed; with
    fixed-kappa samples some seeds never separate the sentences in 1000."""
    x, tt = join(encode_texts(model.tokenizer, texts, model.config.maxlen)[0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(1, max_steps + 1):
        loss = model(x, tt, sample=False).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % check_every == 0:
            model.eval()
            done = model.reconstruct(texts) == texts
            model.train()
            if done:
                return step
    raise AssertionError(f"the fixture model did not learn to reconstruct {texts} in {max_steps} steps")


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """A debug-preset model overfitted on SENTENCES until every one reconstructs exactly (~100 steps,
    under a second), so that z matters; untrained, every code decodes to the same string."""
    vocab = char_vocab(SENTENCES)
    torch.manual_seed(0)
    model = univae.UniVAE(univae.preset("debug", vocab_size=len(vocab)), build_tokenizer(vocab))
    _train_until_reconstructed(model, SENTENCES)
    directory = tmp_path_factory.mktemp("ckpt")
    model.eval().save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def corpus_ckpt(ckpt, tmp_path_factory):
    """The fixture checkpoint as train.py would leave it: train_args.json naming a corpus file of 250
    sentences (split seed 3: a test split of 5), and a prior fitted by `python -m univae.prior`."""
    root = tmp_path_factory.mktemp("corpus_ckpt")
    chars = sorted({ch for s in SENTENCES for ch in s if "\u4e00" <= ch <= "\u9fff"})
    g = torch.Generator().manual_seed(0)
    lines = sorted({"".join(chars[i] for i in torch.randint(len(chars), (6,), generator=g)) for _ in range(260)})[:250]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    directory = root / "ckpt"
    shutil.copytree(ckpt, directory)
    (directory / "train_args.json").write_text(
        json.dumps({"corpus": str(root / "corpus.txt"), "text_field": "text", "split_seed": 3, "val": None}),
        encoding="utf-8",
    )
    assert univae.prior.main(["--checkpoint", str(directory), "--components", "2"]) == 0
    return str(directory)


def run(capsys, *argv):
    code = sample.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, ckpt, *argv):
    code, out, err = run(capsys, "--checkpoint", ckpt, "--json", *argv)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


# ----------------------------------------------------------------------------- modes


def test_prior(capsys, ckpt):
    lines = run_json(capsys, ckpt, "--n", "4", "--seed", "0")
    assert [r["mode"] for r in lines] == ["prior"] * 4 and all(isinstance(r["output"], str) for r in lines)
    assert lines == run_json(capsys, ckpt, "--n", "4", "--seed", "0")
    sampled = run_json(capsys, ckpt, "--n", "4", "--seed", "0", "--temperature", "0.9", "--top-p", "0.95")
    assert sampled == run_json(capsys, ckpt, "--n", "4", "--seed", "0", "--temperature", "0.9", "--top-p", "0.95")
    code, out, err = run(capsys, "--checkpoint", ckpt, "--n", "3")
    assert code == 0 and out.splitlines()[0].split() == ["#", "output"] and len(out.splitlines()) == 4


def test_cached_and_recompute_agree(capsys, ckpt):
    cached = run_json(capsys, ckpt, "--n", "6", "--seed", "1", "--with-z")
    recompute = run_json(capsys, ckpt, "--n", "6", "--seed", "1", "--with-z", "--no-cache")
    assert cached == recompute
    assert len({r["output"] for r in cached}) > 1


def test_reconstruct_args_file_and_stdin(capsys, ckpt, tmp_path, monkeypatch):
    lines = run_json(capsys, ckpt, "--reconstruct", *SENTENCES[:3])
    assert [(r["mode"], r["input"]) for r in lines] == [("reconstruct", s) for s in SENTENCES[:3]]
    assert [r["output"] for r in lines] == SENTENCES[:3]  # the fixture's verified state; no stray spaces
    f = tmp_path / "in.txt"
    f.write_text("\n".join(SENTENCES[:3]) + "\n\n", encoding="utf-8")
    from_file = run_json(capsys, ckpt, "--input", str(f))
    assert from_file == lines
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO(SENTENCES[0] + "\n"))
    assert run_json(capsys, ckpt, "--input", "-") == lines[:1]


def test_edit_respects_dims(capsys, ckpt):
    [base] = run_json(capsys, ckpt, "--reconstruct", SENTENCES[0], "--with-z")
    z0 = torch.tensor(base["z"])
    for spec, changed in [("0:3", range(0, 3)), ("0:4,12:16", [*range(4), *range(12, 16)]), ("-5:", range(11, 16))]:
        lines = run_json(capsys, ckpt, "--text", SENTENCES[0], f"--replace-dims={spec}", "--n", "3", "--with-z")
        assert len(lines) == 3 and all(r["mode"] == "edit" and r["replace_dims"] == spec for r in lines)
        z = torch.tensor([r["z"] for r in lines])
        keep = torch.ones(16, dtype=torch.bool)
        keep[list(changed)] = False
        assert torch.equal(z[:, keep], z0[keep].expand(3, -1))
        assert (z[:, ~keep] != z0[~keep]).all()
    assert lines[0]["dims"] == [[11, 16]] and lines[0]["latent_layers"] == [1]
    code, out, _ = run(capsys, "--checkpoint", ckpt, "--text", SENTENCES[0], "--replace-dims", "0:8", "--n", "2")
    assert code == 0 and "replaced dims 0:8" in out


def test_edit_held_out_sentences_of_the_checkpoints_corpus(capsys, corpus_ckpt):
    lines = run_json(capsys, corpus_ckpt, "--replace-dims", "0:4", "--n", "2", "--seed", "0", "--with-z")
    with open(os.path.join(corpus_ckpt, "train_args.json"), encoding="utf-8") as f:
        corpus = json.load(f)["corpus"]
    sentences, _ = load_sentences(corpus, limit=univae.preset("debug").maxlen - 2)
    held_out = split(sentences, seed=3)["test"]
    assert (
        len(held_out) == sample_flags.HELD_OUT_EDITS and held_out != split(sentences, seed=0)["test"]
    )  # the seed matters
    assert [r["input"] for r in lines] == [t for t in held_out for _ in range(2)] and [r["index"] for r in lines] == [
        0,
        1,
    ] * 5
    assert set(lines[0]) == {"mode", "input", "output", "index", "replace_dims", "dims", "latent_layers", "prior", "z"}
    assert all(
        r["mode"] == "edit" and r["prior"] == "fitted" and r["dims"] == [[0, 4]] and r["latent_layers"] == [0]
        for r in lines
    )
    base = run_json(capsys, corpus_ckpt, "--reconstruct", *held_out, "--with-z")
    z, z0 = torch.tensor([r["z"] for r in lines]), torch.tensor([r["z"] for r in base]).repeat_interleave(2, dim=0)
    assert torch.equal(z[:, 4:], z0[:, 4:]) and (z[:, :4] != z0[:, :4]).all()
    torch.testing.assert_close(z[:, :8].norm(dim=-1), torch.ones(10))  # layer 0 back on its sphere
    # the table: what was replaced and where the sentences come from, once; each sentence, its variants indented
    code, out, err = run(capsys, "--checkpoint", corpus_ckpt, "--replace-dims", "0:4", "--n", "2", "--seed", "0")
    head, *blocks = out.split("\n\n")
    assert code == 0 and head.splitlines() == [
        "replaced dims 0:4 of 16 (latent layers 0; 0 = lowest), redrawn from the fitted prior's conditional given "
        "the kept dims",
        f"sentences: the first 5 sentences of the test split (seed 3) of {corpus}",
    ]

    def shown(a, b):  # two variants: both, or one with its count when they are the same sentence
        return ["    " + a, "    " + b] if a != b else ["    " + a + "  (×2)"]

    assert [b.splitlines() for b in blocks] == [
        [t, *shown(lines[2 * i]["output"], lines[2 * i + 1]["output"])] for i, t in enumerate(held_out)
    ]


def test_edit_table_shows_a_variant_drawn_twice_once_with_its_count(capsys, ckpt, monkeypatch):
    def fake_edit(model, texts, dims, n, return_z=False, **kwargs):
        return ["甲乙", "丙", "甲乙"], torch.zeros(3, model.config.latent_dim)

    monkeypatch.setattr("univae.generate.edit", fake_edit)
    code, out, _ = run(capsys, "--checkpoint", ckpt, "--text", SENTENCES[0], "--replace-dims", "0:8", "--n", "3")
    assert code == 0 and out.split("\n\n")[1].splitlines() == [SENTENCES[0], "    甲乙  (×2)", "    丙"]
    lines = run_json(capsys, ckpt, "--text", SENTENCES[0], "--replace-dims", "0:8", "--n", "3")
    assert [r["output"] for r in lines] == ["甲乙", "丙", "甲乙"]  # --json keeps every draw


def test_edit_every_line_of_a_file(capsys, ckpt, tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("\n".join(SENTENCES[:3]) + "\n", encoding="utf-8")
    lines = run_json(capsys, ckpt, "--input", str(f), "--replace-dims=-5:", "--n", "3", "--seed", "0")
    assert [(r["input"], r["index"], r["prior"]) for r in lines] == [
        (t, i, "uniform") for t in SENTENCES[:3] for i in range(3)
    ]
    # the same draws as editing the sentences through the API in one call
    model = univae.UniVAE.from_pretrained(ckpt)
    assert [r["output"] for r in lines] == model.edit(SENTENCES[:3], "-5:", 3, seed=0)


def test_prior_choice(capsys, corpus_ckpt):
    model = univae.UniVAE.from_pretrained(corpus_ckpt)
    from univae.prior import SAMPLE_SPREAD

    for flag, spread, draw in (
        (None, None, lambda: model.fitted_prior.sample(3, spread=SAMPLE_SPREAD)),
        ("fitted", None, lambda: model.fitted_prior.sample(3, spread=SAMPLE_SPREAD)),
        ("fitted", "1", lambda: model.fitted_prior.sample(3)),  # --prior-spread 1: the fitted density itself
        ("uniform", None, lambda: torch.cat([model.family.prior(3, layer=j) for j in range(2)], dim=-1)),
    ):
        lines = run_json(
            capsys,
            corpus_ckpt,
            "--n",
            "3",
            "--seed",
            "0",
            "--with-z",
            *(["--prior", flag] if flag else []),
            *(["--prior-spread", spread] if spread else []),
        )
        torch.manual_seed(0)
        assert torch.equal(torch.tensor([r["z"] for r in lines]), draw()), flag
        assert [r["prior"] for r in lines] == [flag or "fitted"] * 3
    code, out, err = run(
        capsys, "--checkpoint", corpus_ckpt, "--text", SENTENCES[0], "--replace-dims", "0:8", "--prior-spread", "0.5"
    )
    assert code == 2 and out == "" and "--prior-spread 0.5" in err
    edits = run_json(
        capsys, corpus_ckpt, "--text", SENTENCES[1], "--replace-dims", "0:8", "--prior", "uniform", "--n", "2"
    )
    assert [r["prior"] for r in edits] == ["uniform"] * 2


def test_held_out_edits_need_a_readable_corpus(capsys, ckpt, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(ckpt, directory)
    (directory / "train_args.json").write_text(json.dumps({"corpus": str(tmp_path / "gone.txt"), "split_seed": 0}))
    code, out, err = run(capsys, "--checkpoint", str(directory), "--replace-dims", "0:4")
    assert code != 0 and out == "" and len(err.splitlines()) == 1
    assert "gone.txt" in err and "pass --text or --input" in err, err


def test_interpolate_and_analogy(capsys, ckpt):
    lines = run_json(capsys, ckpt, "--interpolate", SENTENCES[0], SENTENCES[1], "--steps", "5")
    assert [r["alpha"] for r in lines] == [0, 0.25, 0.5, 0.75, 1.0] and lines[0]["input"] == SENTENCES[:2]
    [a, b] = run_json(capsys, ckpt, "--reconstruct", *SENTENCES[:2])
    assert lines[0]["output"] == a["output"] and lines[-1]["output"] == b["output"]
    lines = run_json(capsys, ckpt, "--analogy", *SENTENCES[:3], "--n", "3")
    assert len(lines) == 3 and lines[0]["input"] == SENTENCES[:3]
    code, out, _ = run(capsys, "--checkpoint", ckpt, "--analogy", *SENTENCES[:3])
    assert code == 0 and " :: " in out


def test_augment(capsys, ckpt, tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "--checkpoint", ckpt, "--augment", str(f), "--n", "4", "--seed", "0")
    assert code == 0
    groups = [json.loads(line) for line in out.splitlines()]
    assert [g["input"] for g in groups] == SENTENCES
    for g in groups:
        assert g["input"] not in g["outputs"] and len(set(g["outputs"])) == len(g["outputs"]) <= 4
    out_file = tmp_path / "aug.jsonl"
    code, out, err = run(
        capsys, "--checkpoint", ckpt, "--augment", str(f), "--n", "4", "--seed", "0", "--out", str(out_file)
    )
    assert code == 0 and "variants" in out and "wrote 5 lines" in err
    assert [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()] == groups
    lines = run_json(capsys, ckpt, "--augment", str(f), "--n", "4", "--seed", "0")
    assert [r["output"] for r in lines] == [o for g in groups for o in g["outputs"]]
    # one spread per latent layer (the debug preset has 2): all zero draws every variant from the
    # posterior mean itself, so only the kept start varies them; a wrong count is named
    code, out, err = run(
        capsys, "--checkpoint", ckpt, "--augment", str(f), "--n", "4", "--seed", "0", "--spread", "0,0"
    )
    zero = [json.loads(line) for line in out.splitlines()]
    code1, out1, _ = run(capsys, "--checkpoint", ckpt, "--augment", str(f), "--n", "4", "--seed", "0", "--spread", "0")
    assert code == code1 == 0 and zero == [json.loads(line) for line in out1.splitlines()]
    code, out, err = run(capsys, "--checkpoint", ckpt, "--augment", str(f), "--spread", "0,1,1")
    assert code == 2 and out == "" and "--spread has 3 values" in err and "2 latent layers" in err
    code, out, err = run(capsys, "--checkpoint", ckpt, "--augment", str(f), "--spread", "1,-1")
    assert code == 2 and out == "" and "non-negative" in err


def test_augment_and_input_stream_their_file_a_chunk_at_a_time(capsys, ckpt, tmp_path, monkeypatch):
    """--augment and --input read and decode STREAM_LINES lines per pass: generate sees chunks of at
    most that many sentences, in file order, and the outputs are those of one pass decoded in
    batches of the same size (augment keeps every input once, in order)."""
    lines = [SENTENCES[i % 5] + "，" + SENTENCES[(3 * i) % 5][: 1 + i % 4] for i in range(23)]
    f = tmp_path / "in.txt"
    f.write_text("\n".join(lines[:10]) + "\n\n  \n" + "\n".join(lines[10:]) + "\n", encoding="utf-8")
    # decoding batches of 5, as the streamed passes are: the same rows batched together, the same floats
    whole = [r["output"] for r in run_json(capsys, ckpt, "--input", str(f), "--batch-size", "5")]
    seen, reconstruct, augment = [], univae.generate.reconstruct, univae.generate.augment
    monkeypatch.setattr(sample_modes, "STREAM_LINES", 5)
    monkeypatch.setattr(
        univae.generate, "reconstruct", lambda m, texts, **k: seen.append(len(texts)) or reconstruct(m, texts, **k)
    )
    monkeypatch.setattr(
        univae.generate, "augment", lambda m, texts, n, **k: seen.append(len(texts)) or augment(m, texts, n, **k)
    )
    streamed = run_json(capsys, ckpt, "--input", str(f), "--batch-size", "5")
    assert seen == [5, 5, 5, 5, 3] and [r["input"] for r in streamed] == lines
    assert [r["output"] for r in streamed] == whole
    seen.clear()
    out_file = tmp_path / "aug.jsonl"
    code, out, err = run(capsys, "--checkpoint", ckpt, "--augment", str(f), "--n", "2", "--out", str(out_file))
    groups = [json.loads(line) for line in out_file.read_text(encoding="utf-8").splitlines()]
    assert code == 0 and seen == [5, 5, 5, 5, 3] and "wrote 23 lines" in err
    assert [g["input"] for g in groups] == lines


def test_a_failed_stream_leaves_the_out_file_as_it_was(capsys, ckpt, tmp_path, monkeypatch):
    """A sentence too long for --strict in the third chunk stops the run with one line; --out keeps
    its old content and no temporary file is left beside it."""
    monkeypatch.setattr(sample_modes, "STREAM_LINES", 4)
    f = tmp_path / "in.txt"
    f.write_text("\n".join(SENTENCES * 2 + ["我喜欢手机" * 8] + SENTENCES) + "\n", encoding="utf-8")
    out_file = tmp_path / "aug.jsonl"
    out_file.write_text("old\n", encoding="utf-8")
    code, out, err = run(
        capsys, "--checkpoint", ckpt, "--augment", str(f), "--n", "2", "--strict", "--out", str(out_file)
    )
    assert code == 2 and "maxlen" in err and len(err.splitlines()) == 1
    assert out_file.read_text(encoding="utf-8") == "old\n" and sorted(os.listdir(tmp_path)) == ["aug.jsonl", "in.txt"]


def test_truncation_warns_or_fails_with_strict(capsys, ckpt):
    long = "我喜欢手机" * 6
    code, out, err = run(capsys, "--checkpoint", ckpt, "--json", "--reconstruct", long)
    assert code == 0 and json.loads(out)["input"] == long and "truncated" in err
    code, out, err = run(capsys, "--checkpoint", ckpt, "--reconstruct", long, "--strict")
    assert code != 0 and out == "" and "maxlen" in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--text", "今天", "--replace-dims", "0:17"], "outside the code"),
        (["--text", "今天", "--replace-dims=-17:"], "outside the code"),
        (["--text", "今天", "--replace-dims", "3:3"], "empty"),
        (["--text", "今天", "--replace-dims", "0-4"], "malformed"),
        (["--text", "今天", "--replace-dims", "0:4:2"], "no step"),
        (["--text", "今天"], "--replace-dims"),
        (["--replace-dims", "0:4"], "no train_args.json"),  # held-out sentences: works with one (test above)
        (["--reconstruct", "今天", "--replace-dims", "0:4"], "--replace-dims goes with --text, --input, or alone"),
        (["--prior", "fitted"], "python -m univae.prior --checkpoint"),
        (["--text", "今天", "--replace-dims", "0:4", "--prior", "fitted"], "python -m univae.prior --checkpoint"),
        (["--prior", "bogus"], "invalid choice"),
        (["--interpolate", "a", "b", "--prior", "uniform"], "--prior"),
        (["--prior", "fitted", "--component", "0"], "--component"),
        (["--reconstruct", ""], "empty text"),
        (["--text", " ", "--replace-dims", "0:4"], "empty text"),
        (["--input", "/nonexistent/file.txt"], "cannot read"),
        (["--n", "0"], "at least 1"),
        (["--interpolate", "a", "b", "--steps", "1"], "--steps"),
        (["--beam-size", "2", "--top-k", "5"], "beam search"),
        (["--top-p", "0"], "top-p"),
        (["--out", "x.jsonl"], "--augment"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_bad_arguments_give_one_line(capsys, ckpt, argv, message):
    code, out, err = run(capsys, "--checkpoint", ckpt, *argv)
    assert code != 0 and out == ""
    assert len(err.splitlines()) == 1 and message in err, err


def test_bad_checkpoints(capsys, tmp_path, hf_dirs):
    code, out, err = run(capsys, "--checkpoint", str(tmp_path / "missing"))
    assert code != 0 and "python train.py" in err and len(err.splitlines()) == 1
    for directory in (tmp_path, hf_dirs["bert"]):  # empty dir; a HF BERT is an init, not a univae checkpoint
        code, out, err = run(capsys, "--checkpoint", str(directory))
        assert code != 0 and "not a univae checkpoint" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"univae": {"hidden_size": 32}}))
    code, out, err = run(capsys, "--checkpoint", str(bad))
    assert code != 0 and "cannot load checkpoint" in err and len(err.splitlines()) == 1


def test_bad_input_file(capsys, ckpt, tmp_path):
    for content, message in [(b"\xff\xfe\x00", "not UTF-8"), (b"\n \n", "no sentences")]:
        f = tmp_path / "in.txt"
        f.write_bytes(content)
        code, out, err = run(capsys, "--checkpoint", ckpt, "--augment", str(f))
        assert code != 0 and message in err and len(err.splitlines()) == 1


# ----------------------------------------------------------------------------- vq codes, gmm components


def _trained_checkpoint(tmp_path_factory, latent, steps=40, **overrides):
    vocab = char_vocab(SENTENCES)
    torch.manual_seed(0)
    model = univae.UniVAE(
        univae.preset("debug", vocab_size=len(vocab), latent=latent, **overrides), build_tokenizer(vocab)
    )
    x, tt = join(encode_texts(model.tokenizer, SENTENCES, model.config.maxlen)[0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(x, tt).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    directory = tmp_path_factory.mktemp(latent)
    model.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def vq_ckpt(tmp_path_factory):
    return _trained_checkpoint(tmp_path_factory, "vq", codebook_size=16, vq_dead_steps=5)


@pytest.fixture(scope="session")
def gmm_ckpt(tmp_path_factory):
    return _trained_checkpoint(tmp_path_factory, "gmm", mixture_components=3)


def test_vq_codes_decode_and_edit_by_code_position(capsys, vq_ckpt):
    lines = run_json(capsys, vq_ckpt, "--reconstruct", *SENTENCES[:2])
    codes = [r["codes"] for r in lines]
    assert all(len(c) == 2 and all(0 <= x < 16 for x in c) for c in codes)
    [decoded] = run_json(capsys, vq_ckpt, "--codes", " ".join(map(str, codes[0])))
    assert decoded["mode"] == "codes" and decoded["output"] == lines[0]["output"] and decoded["codes"] == codes[0]
    cached = run_json(
        capsys, vq_ckpt, "--codes", f"{codes[1][0]},{codes[1][1]}", "--n", "3", "--seed", "0", "--temperature", "1"
    )
    recompute = run_json(
        capsys,
        vq_ckpt,
        "--codes",
        f"{codes[1][0]} {codes[1][1]}",
        "--n",
        "3",
        "--seed",
        "0",
        "--temperature",
        "1",
        "--no-cache",
    )
    assert [(r["output"], r["codes"]) for r in cached] == [(r["output"], r["codes"]) for r in recompute]
    edits = run_json(capsys, vq_ckpt, "--text", SENTENCES[0], "--replace-dims", "1", "--n", "4", "--seed", "0")
    assert all(r["codes"][0] == codes[0][0] and r["latent_layers"] == [1] for r in edits)  # code 0 kept, 1 redrawn
    path = run_json(capsys, vq_ckpt, "--interpolate", *SENTENCES[:2], "--steps", "4")
    assert path[0]["codes"] == codes[0] and path[-1]["codes"] == codes[1]
    code, out, _ = run(capsys, "--checkpoint", vq_ckpt, "--codes", "1 2")
    assert code == 0 and out.startswith("codes: 1 2")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--codes", "1 2 3"], "2 latent layers"),
        (["--codes", "1 16"], "not a code"),
        (["--codes", "1 x"], "integers"),
        (["--codes", " "], "empty"),
        (["--text", "今天", "--replace-dims", "0:3"], "outside the code"),
        (["--n", "2", "--component", "0"], "--latent gmm"),
        (["--prior", "fitted"], "vq checkpoint has no fitted prior"),
    ],
)
def test_vq_bad_arguments(capsys, vq_ckpt, argv, message):
    code, out, err = run(capsys, "--checkpoint", vq_ckpt, *argv)
    assert code != 0 and out == "" and len(err.splitlines()) == 1 and message in err, err


def test_gmm_component_sampling(capsys, gmm_ckpt, ckpt):
    a = run_json(capsys, gmm_ckpt, "--n", "3", "--seed", "0", "--component", "2", "--with-z")
    model = univae.UniVAE.from_pretrained(gmm_ckpt)
    torch.manual_seed(0)
    z = model.sample_prior(3, component=2)
    assert torch.allclose(torch.tensor([r["z"] for r in a]), z)
    assert (
        len(run_json(capsys, gmm_ckpt, "--text", SENTENCES[0], "--replace-dims", "0:8", "--component", "1", "--n", "2"))
        == 2
    )
    for checkpoint, argv, message in [
        (gmm_ckpt, ["--component", "3"], "components 0..2"),
        (gmm_ckpt, ["--reconstruct", "今天", "--component", "0"], "prior sampling"),
        (gmm_ckpt, ["--codes", "1 2"], "--latent vq"),
        (ckpt, ["--component", "0"], "--latent gmm"),
    ]:
        code, out, err = run(capsys, "--checkpoint", checkpoint, *argv)
        assert code != 0 and out == "" and len(err.splitlines()) == 1 and message in err, err
