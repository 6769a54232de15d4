"""Masked-LM pieces (univae/mlm.py, used by python -m univae.pretrain): BERT's corruption rates, and
the loss against transformers' BertForMaskedLM on the same batch, in both slots."""

import torch

import univae
from univae.mlm import IGNORE, mask_tokens, mlm_loss


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
        ref = hf(
            input_ids=inputs, attention_mask=inputs.ne(0).long(), token_type_ids=torch.zeros_like(inputs), labels=labels
        ).loss
    assert n == labels.ne(IGNORE).sum() and n > 3
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the target slot: positions maxlen.., segment 1
        tgt, _ = mlm_loss(model.transformer, inputs, labels, pad_id=0, target_slot=True)
        m = model.config.maxlen
        ref = hf(
            input_ids=inputs,
            attention_mask=inputs.ne(0).long(),
            token_type_ids=torch.ones_like(inputs),
            position_ids=torch.arange(m, m + inputs.shape[1])[None].expand(3, -1),
            labels=labels,
        ).loss
    torch.testing.assert_close(tgt, ref, atol=1e-5, rtol=1e-5)
