"""The masked-LM phase (univae/mlm.py, train.py --mlm-fraction): BERT's corruption rates, the loss
against transformers' BertForMaskedLM on the same batch, and the phase switch in train.py."""
import json

import pytest
import torch
from safetensors.torch import load_file

import train
import univae
from univae.mlm import IGNORE, mask_tokens, mlm_loss

from test_train import base_args, corpus  # noqa: F401 (corpus is a fixture)


def test_mask_tokens_follows_bert_rates_and_never_touches_special_tokens():
    torch.manual_seed(0)
    ids = torch.randint(5, 100, (400, 50))
    ids[:, 0], ids[:, 40], ids[:, 41:] = 2, 3, 0  # [CLS] x1..x39 [SEP] pad
    inputs, labels = mask_tokens(ids, mask_id=4, vocab_size=100, special_ids=[0, 2, 3])
    chosen = labels.ne(IGNORE)
    assert not chosen[:, [0, *range(40, 50)]].any()  # [CLS], [SEP], padding never chosen
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    share = chosen[:, 1:40].float().mean().item()
    assert abs(share - 0.15) < 0.01  # 15,600 tokens: sd ~0.003
    n = chosen.sum().item()
    masked = (inputs[chosen] == 4).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n  # 10% kept, plus random draws that hit the same id
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02


def test_mlm_loss_matches_transformers_bert_for_masked_lm(hf_bert):
    directory, hf = hf_bert
    model = univae.UniVAE.from_pretrained(str(directory), attn="eager").eval()
    torch.manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (3, 10))
    ids[:, 0], ids[0, 7:], ids[1, 9] = 2, 0, 3  # varied lengths with padding
    inputs, labels = mask_tokens(ids, 4, model.config.vocab_size, [0, 2, 3], rate=0.5)
    with torch.no_grad():
        ours, n = mlm_loss(model.transformer, inputs, labels, pad_id=0)
        ref = hf(input_ids=inputs, attention_mask=inputs.ne(0).long(), token_type_ids=torch.zeros_like(inputs),
                 labels=labels).loss
    assert n == labels.ne(IGNORE).sum() and n > 3
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the target slot: positions maxlen.., segment 1
        tgt, _ = mlm_loss(model.transformer, inputs, labels, pad_id=0, target_slot=True)
        m = model.config.maxlen
        ref = hf(input_ids=inputs, attention_mask=inputs.ne(0).long(), token_type_ids=torch.ones_like(inputs),
                 position_ids=torch.arange(m, m + inputs.shape[1])[None].expand(3, -1), labels=labels).loss
    torch.testing.assert_close(tgt, ref, atol=1e-5, rtol=1e-5)


def test_train_runs_the_mlm_phase_first_and_resumes_exactly_across_the_switch(corpus, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    args = ["--max-steps", "12", "--mlm-fraction", "0.5", "--log-every", "1", "--save-every", "2", "--keep-last", "0", "--warmup", "2"]
    train.main(base_args(corpus, a, *args))
    train.main(base_args(corpus, b, *args, "--resume", str(a / "step-4")))  # mid-MLM, across the switch at 6
    wa, wb = load_file(a / "step-12" / "model.safetensors"), load_file(b / "step-12" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = [json.loads(l) for l in open(a / "metrics.jsonl", encoding="utf-8") if "split" not in l]
    assert ["mlm_ce" in r for r in rows] == [True] * 6 + [False] * 6 and "ce" in rows[6]
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(lrs[6]) and lrs[1] == pytest.approx(lrs[7])  # each phase warms up afresh
    w2, w4 = load_file(a / "step-2" / "model.safetensors"), load_file(a / "step-4" / "model.safetensors")
    assert torch.equal(w2["down.0.weight"], w4["down.0.weight"])  # the MLM phase trains the Transformer only
    assert not torch.equal(w2["transformer.layers.0.qkv.weight"], w4["transformer.layers.0.qkv.weight"])
    assert not torch.equal(w4["down.0.weight"], wa["down.0.weight"])  # the VAE phase trains the latent heads
    assert torch.load(a / "last" / "training_state.pt", weights_only=True)["vae_start"] == 6
