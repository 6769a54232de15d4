"""bench/generate_peer.py on a tiny model: its GPT-2 peer has the UniVAE's shape, and both sides of
every mode produce exactly B x (maxlen - 1) new tokens, the counts its tokens/s divide. No timing."""

import os
import sys

import pytest
import torch
from conftest import CHARS, VOCAB

from univae.tokenizer import SEP, build_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import generate_peer as GP  # noqa: E402

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=48,
    num_latent_layers=1,
    z_dim=8,
    maxlen=5,
    max_position_embeddings=16,
)


@pytest.fixture(scope="module")
def pair():
    model = GP.build_univae("debug", build_tokenizer(VOCAB), **TINY)
    return model, GP.gpt2_peer(model, model.config.maxlen - 1)


def test_peer_has_the_univaes_width_depth_heads_ffn_activation_and_vocab(pair):
    model, peer = pair
    c, g = model.config, peer.config
    assert (g.n_embd, g.n_layer, g.n_head, g.n_inner, g.vocab_size) == (32, 2, 2, 48, len(VOCAB))
    assert (g.n_embd, g.n_layer, g.n_head, g.n_inner, g.vocab_size) == (
        c.hidden_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.intermediate_size,
        c.vocab_size,
    )
    assert g.activation_function == c.hidden_act == "gelu" and g.n_positions >= c.maxlen
    assert peer.lm_head.weight.shape == model.transformer.embed.word.weight.shape
    assert g.eos_token_id == model.tokenizer.token_to_id(SEP)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", GP.MODES)
def test_both_sides_generate_b_times_maxlen_minus_one_tokens(pair, mode, dtype):
    model, peer = pair
    texts = ["".join(CHARS[:3]), "".join(CHARS[5:7])]
    r = GP.measure(model, peer, mode, 2, texts, torch.device("cpu"), dtype, reps=1)
    assert r["univae"][0] == r["gpt2"][0] == 2 * 4
    assert r["univae"][1] > 0 and r["gpt2"][1] > 0


def test_an_early_sep_is_counted_and_the_bias_keeps_the_decoder_from_it(pair):
    model, _ = pair
    bias = model.transformer.head.bias
    sep = model.tokenizer.token_to_id(SEP)
    keep = bias[sep].item()
    with torch.no_grad():
        bias[sep] = 1e4  # every step says [SEP]: one new token per sentence
    try:
        assert GP.univae_new_tokens(model, "prior greedy", 3, None, 0.9) == 3
    finally:
        with torch.no_grad():
            bias[sep] = keep
    assert keep == -1e4 and GP.univae_new_tokens(model, "prior greedy", 3, None, 0.9) == 3 * 4


def test_peer_count_stops_at_the_first_eos():
    out = torch.tensor([[2, 7, 3, 0, 0], [2, 7, 8, 9, 6], [2, 3, 0, 0, 0]])
    assert GP.peer_new_tokens(out, 1, eos=3) == 2 + 4 + 1
