"""python -m univae.pretrain and the bundled backbone: what it writes is a transformers directory
(BertForMaskedLM / RoFormerForMaskedLM and AutoTokenizer load it and agree with us), resume is
exact, held-out sentences stay held out, bad input is one line; the shipped backbone loads and
knows the language."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from test_train import ROOT, SENTENCES

import univae
from univae import data, pretrain, training
from univae.checkpoint import BUNDLED, convert_hf_state_dict, to_hf_state_dict
from univae.config import UniVAEConfig
from univae.mlm import IGNORE, mask_tokens, mlm_loss
from univae.tokenizer import encode_texts, load_tokenizer
from univae.transformer import Transformer, load_transformer

HF_CLASSES = {"bert": transformers.BertForMaskedLM, "roformer": transformers.RoFormerForMaskedLM}


@pytest.fixture()
def corpus(tmp_path):
    """150 distinct short review-like lines: enough for a split and a vocab."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(f"{s}{i}" for i, s in enumerate(SENTENCES * 3)) + "\n", encoding="utf-8")
    return str(path)


def run(corpus, out, *extra):
    pretrain.main(
        [
            "--corpus",
            corpus,
            "--out",
            str(out),
            "--preset",
            "debug",
            "--batch-size",
            "16",
            "--precision",
            "fp32",
            "--log-every",
            "2",
            "--eval-every",
            "1000",
            "--eval-sentences",
            "8",
            "--warmup",
            "2",
            *extra,
        ]
    )


@pytest.mark.parametrize("model_type, extra", [("bert", {}), ("roformer", {"embedding_size": 16})])
def test_hf_names_round_trip_through_the_key_table(model_type, extra):
    torch.manual_seed(0)
    c = UniVAEConfig(
        model_type=model_type,
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_latent_layers=1,
        maxlen=8,
        **extra,
    )
    ours = Transformer(c)
    hf_sd = to_hf_state_dict(ours)
    assert f"{model_type}.encoder.layer.2.attention.self.key.bias" in hf_sd
    assert "cls.predictions.decoder.weight" not in hf_sd  # tied to the word embeddings, as transformers saves it
    back, has_head = convert_hf_state_dict(hf_sd, Transformer(c))
    assert has_head and back.keys() == ours.state_dict().keys()
    for k, v in ours.state_dict().items():
        assert torch.equal(back[k], v), k


@pytest.mark.parametrize("model_type", ["bert", "roformer"])
def test_pretrain_writes_a_directory_transformers_loads_with_the_same_logits(corpus, tmp_path, model_type):
    out, export = tmp_path / "pt", tmp_path / "export"
    run(corpus, out, "--model-type", model_type, "--max-steps", "4", "--export", str(export))
    for directory in (out / "last", export):
        hf = HF_CLASSES[model_type].from_pretrained(directory).eval()
        ours = load_transformer(str(directory), attn="eager").eval()
        tok = transformers.AutoTokenizer.from_pretrained(directory)
        texts = ["今天天气很好", "酒店的服务很周到"]
        ids, _, _ = encode_texts(load_tokenizer(str(directory)), texts, maxlen=ours.config.maxlen)
        assert tok(texts[0])["input_ids"] == ids[0][ids[0].ne(0)].tolist()  # the same ids, [CLS] .. [SEP]
        inputs, labels = mask_tokens(ids, tok.mask_token_id, ours.config.vocab_size, [0, 2, 3], rate=0.5)
        with torch.no_grad():
            ref = hf(input_ids=inputs, attention_mask=inputs.ne(0).long(), token_type_ids=torch.zeros_like(inputs))
            mine = ours.logits(ours(inputs, attention_mask=inputs.ne(0)))
            loss, _ = mlm_loss(ours, inputs, labels, pad_id=0)
        real = inputs.ne(0)
        torch.testing.assert_close(mine[real], ref.logits[real], atol=1e-5, rtol=1e-5)
        chosen = labels.ne(IGNORE)
        torch.testing.assert_close(
            loss, torch.nn.functional.cross_entropy(ref.logits[chosen], labels[chosen]), atol=1e-5, rtol=1e-5
        )
    card = (export / "README.md").read_text(encoding="utf-8")
    assert f"python -m univae.pretrain --corpus {corpus}" in card and "4 steps" in card
    # and train.py fine-tunes it through --init-from
    model = univae.UniVAE.from_pretrained(str(export))
    assert model.config.model_type == model_type and model.tokenizer.token_to_id("[MASK]") is not None


def test_pretrain_resumes_exactly(corpus, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run(corpus, a, "--max-steps", "8", "--save-every", "4", "--keep-last", "0")
    run(corpus, b, "--max-steps", "8", "--resume", str(a / "step-4"))
    wa, wb = load_file(a / "step-8" / "model.safetensors"), load_file(b / "step-8" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    w4 = load_file(a / "step-4" / "model.safetensors")
    assert not torch.equal(
        w4["bert.encoder.layer.0.attention.self.query.weight"], wa["bert.encoder.layer.0.attention.self.query.weight"]
    )
    rows = [json.loads(line) for line in open(a / "metrics.jsonl", encoding="utf-8")]
    assert [r["step"] for r in rows if "split" not in r] == [2, 4, 6, 8]
    assert rows[-1]["split"] == "val" and 0 <= rows[-1]["mlm_accuracy"] <= 1


def test_pretraining_sees_only_the_train_split_train_py_uses(corpus):
    cfg = pretrain.PretrainConfig(corpus=f"{corpus},{corpus}", max_steps=1, split_seed=3)
    train, val = pretrain.load_corpora(cfg, log=lambda *a: None)
    sentences, _ = data.load_sentences(corpus, limit=cfg.maxlen - 2)
    splits = data.split(sentences, seed=3)  # as train.py --split-seed 3 cuts it
    assert train == splits["train"] * 2 and val == splits["val"] * 2
    assert not set(train) & (set(splits["val"]) | set(splits["test"]))


def _error(argv, capsys):
    with pytest.raises(SystemExit) as e:
        pretrain.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_input_is_one_line_and_touches_nothing(corpus, tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("\n".join(SENTENCES[:20]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert "needs at least 100" in _error(["--corpus", str(small), "--max-steps", "2", "--out", str(out)], capsys)
    assert "--max-steps or --time-budget" in _error(["--corpus", corpus, "--out", str(out)], capsys)
    assert "--model-type must be bert or roformer" in _error(
        ["--model-type", "gpt2", "--max-steps", "1", "--out", str(out)], capsys
    )
    assert "nothing to resume" in _error(
        ["--resume", str(tmp_path / "nope"), "--max-steps", "1", "--out", str(out)], capsys
    )
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert "not empty" in _error(["--corpus", corpus, "--max-steps", "1", "--out", str(out)], capsys)
    assert (out / "keep.txt").read_text() == "precious"


def test_torchrun_two_cpu_processes(corpus, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29537",
        "-m",
        "univae.pretrain",
        "--corpus",
        corpus,
        "--out",
        str(out),
        "--preset",
        "debug",
        "--batch-size",
        "8",
        "--precision",
        "fp32",
        "--max-steps",
        "4",
        "--save-every",
        "2",
        "--eval-sentences",
        "8",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("stopped at step 4") == 1  # only rank 0 logs
    state = torch.load(out / "last" / "training_state.pt", weights_only=True)
    assert state["step"] == 4 and state["rng"]["cpu"].shape[0] == 2
    assert json.load(open(out / "last" / "train_args.json"))["world_size"] == 2


# ----------------------------------------------------------------------------- the bundled backbone


def test_the_bundled_backbone_loads_in_transformers_and_knows_the_language():
    directory = BUNDLED["bundled"]
    hf = transformers.BertForMaskedLM.from_pretrained(directory, dtype=torch.float32).eval()
    ours = load_transformer("bundled", attn="eager").eval()  # named by one word
    tok = load_tokenizer(directory)
    val = data.split(data.load_sentences("builtin:reviews", limit=30)[0], seed=0)["val"][:300]
    ids, _, _ = encode_texts(tok, val, maxlen=32)
    torch.manual_seed(0)
    inputs, labels = mask_tokens(ids, tok.token_to_id("[MASK]"), ours.config.vocab_size, [0, 2, 3])
    with torch.no_grad():
        ref = hf(input_ids=inputs, attention_mask=inputs.ne(0).long(), token_type_ids=torch.zeros_like(inputs)).logits
        mine = ours.logits(ours(inputs, attention_mask=inputs.ne(0)))
    real, chosen = inputs.ne(0), labels.ne(IGNORE)
    torch.testing.assert_close(mine[real], ref[real], atol=1e-4, rtol=1e-4)
    accuracy = (mine[chosen].argmax(-1) == labels[chosen]).float().mean().item()
    assert accuracy > 0.3  # held-out reviews (train.py's val split), BERT masking; random weights score ~0.001
    card = open(os.path.join(directory, "README.md"), encoding="utf-8").read()
    assert "python -m univae.pretrain" in card and "builtin:reviews" in card
    model = univae.UniVAE.from_pretrained("bundled", z_dim=64)
    assert model.config.z_dim == 64 and model.tokenizer.token_to_id("[MASK]") is not None


def test_the_default_run_fine_tunes_the_bundled_backbone(corpus, tmp_path, capsys):
    import train
    from univae.config import BUNDLED_MODEL, BUNDLED_TRAINING

    out = tmp_path / "ft"
    train.main(
        [
            "--corpus",
            corpus,
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--eval-sentences",
            "2",
            "--prior-components",
            "0",
            "--precision",
            "fp32",
        ]
    )
    assert "outside the vocab of bundled" in capsys.readouterr().out  # the share of the corpus that becomes [UNK]
    model = univae.UniVAE.from_pretrained(str(out / "last"))
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size) == (4, 192)
    assert {k: getattr(c, k) for k in BUNDLED_MODEL} == BUNDLED_MODEL
    args = json.load(open(out / "last" / "train_args.json", encoding="utf-8"))
    assert args["init_from"] == "bundled" and args["lr"] == BUNDLED_TRAINING["lr"] and not args["from_scratch"]
    backbone = load_transformer("bundled")  # two warmup steps barely move the pretrained weights
    torch.testing.assert_close(model.transformer.embed.word.weight, backbone.embed.word.weight, atol=1e-3, rtol=0)


def test_precision_auto_follows_the_hardware(tmp_path):
    for flags, fast in [
        ("fpu avx2 avx512f avx512_bf16", True),
        ("fpu avx2 amx_bf16 amx_tile", True),
        ("fpu sse avx2 fma", False),
    ]:
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        assert training.cpu_has_fast_bf16(str(info)) is fast
    cpu = torch.device("cpu")
    expected = torch.bfloat16 if training.cpu_has_fast_bf16() else None
    assert training.autocast_dtype("auto", cpu) == expected
    assert training.autocast_dtype("fp32", cpu) is None and training.autocast_dtype("bf16", cpu) == torch.bfloat16


def test_fine_tuning_bad_input_is_one_line(corpus, tmp_path, capsys, hf_bert):
    import shutil

    import train

    def error(*argv):
        with pytest.raises(SystemExit) as e:
            train.main(["--out", str(tmp_path / "out"), "--max-steps", "1", "--precision", "fp32", *argv])
        assert e.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("train.py: error: ")
        return lines[0]

    few = tmp_path / "few.txt"
    few.write_text("今天天气很好\n房间太小了\n", encoding="utf-8")
    assert "need at least 3 sentences" in error("--init-from", str(hf_bert[0]), "--corpus", str(few))
    for name, damage, message in [
        (
            "short-vocab",
            lambda d: (d / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n", encoding="utf-8"),
            "vocab.txt has 4 tokens but config.json says vocab_size",
        ),
        ("gpt2", lambda d: (d / "config.json").write_text(json.dumps({"model_type": "gpt2"})), "model_type 'gpt2'"),
        (
            "no-encoder",
            lambda d: save_file(
                {k: v for k, v in load_file(d / "model.safetensors").items() if "encoder" not in k},
                d / "model.safetensors",
            ),
            "missing weights for: layers.0",
        ),
    ]:
        broken = tmp_path / name
        shutil.copytree(hf_bert[0], broken)
        damage(broken)
        assert message in error("--init-from", str(broken), "--corpus", corpus), name
    assert not (tmp_path / "out").exists()
