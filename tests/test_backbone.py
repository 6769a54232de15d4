"""Parity with transformers: tiny random HF models saved with save_pretrained, loaded by us."""

import json

import pytest
import torch
import transformers

import univae
from univae.checkpoint import convert_hf_state_dict


def _padded_batch(vocab_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (3, 11), generator=g)
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 7:] = 0
    attention_mask[2, 3:] = 0
    ids[attention_mask == 0] = 0
    token_type_ids = torch.zeros_like(ids)
    token_type_ids[:, 6:] = 1
    return ids, token_type_ids, attention_mask


@pytest.mark.parametrize(
    "kind", ["BertModel", "BertForMaskedLM", "BertForPreTraining", "RoFormerModel", "RoFormerForMaskedLM"]
)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_hidden_states_match_transformers(tmp_path, kind, attn):
    from conftest import VOCAB, write_vocab

    torch.manual_seed(0)
    cls = transformers.BertConfig if kind.startswith("Bert") else transformers.RoFormerConfig
    extra = {"embedding_size": 24} if kind == "RoFormerModel" else {}
    config = cls(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=40,
        max_position_embeddings=64,
        **extra,
    )
    hf = getattr(transformers, kind)(config).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "LayerNorm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    write_vocab(tmp_path)

    ours = univae.load_transformer(str(tmp_path), attn=attn).eval()
    ids, tt, am = _padded_batch(len(VOCAB))
    with torch.no_grad():
        base = getattr(hf, "bert", None) or getattr(hf, "roformer", None) or hf
        ref = base(input_ids=ids, token_type_ids=tt, attention_mask=am).last_hidden_state
        got = ours(ids, tt, am)
    real = am.bool()
    torch.testing.assert_close(got[real], ref[real], atol=1e-5, rtol=1e-5)
    if kind.endswith("MaskedLM") or kind == "BertForPreTraining":
        with torch.no_grad():
            head = hf.cls.predictions(ref)
        torch.testing.assert_close(ours.logits(got)[real], head[real], atol=1e-5, rtol=1e-5)


def test_key_table_rejects_unknown_keys_and_bad_shapes(hf_bert):
    directory, hf = hf_bert
    transformer = univae.load_transformer(str(directory))
    sd = {f"bert.{k}": v for k, v in hf.bert.state_dict().items()}
    with pytest.raises(ValueError, match="does not know"):
        convert_hf_state_dict({**sd, "bert.encoder.layer.0.attention.self.rel_bias": torch.zeros(1)}, transformer)
    bad = dict(sd)
    bad["bert.encoder.layer.0.output.dense.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        convert_hf_state_dict(bad, transformer)
    missing = dict(sd)
    del missing["bert.encoder.layer.1.output.dense.weight"]
    with pytest.raises(ValueError, match="missing weights"):
        convert_hf_state_dict(missing, transformer)


def test_head_tied_when_absent(hf_bert, tmp_path):
    """BertModel has no MLM head: ours is fresh, and its decoder is the word embedding itself."""
    directory, hf = hf_bert
    hf.bert.save_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text((directory / "vocab.txt").read_text())
    t = univae.load_transformer(str(tmp_path))
    torch.testing.assert_close(t.embed.word.weight, hf.bert.embeddings.word_embeddings.weight)
    h = torch.randn(1, 2, 32)
    expected = t.head.norm(t.head.act(t.head.dense(h))) @ t.embed.word.weight.T + t.head.bias
    torch.testing.assert_close(t.logits(h), expected)


def test_pytorch_model_bin_and_tf_names(hf_bert, tmp_path):
    """pytorch_model.bin (weights_only load) with TF-era gamma/beta LayerNorm names."""
    directory, hf = hf_bert
    sd = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in hf.state_dict().items()
    }
    torch.save(sd, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    t1, t2 = univae.load_transformer(str(tmp_path)), univae.load_transformer(str(directory))
    for (k, a), b in zip(t1.state_dict().items(), t2.state_dict().values()):
        assert torch.equal(a, b), k


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="gpt2"):
        univae.load_transformer(str(tmp_path))
