"""Shared fixtures: tiny HF BERT/RoFormer checkpoints made with transformers (no hub access)."""

import os

import pytest
import torch

from univae.tokenizer import SPECIAL_TOKENS

# The suite's models are tiny: on a 2-core machine a second intra-op thread only adds
# synchronisation (and under load, ~100x slowdowns of small ops). UNIVAE_TEST_THREADS=2 runs the
# suite at two threads, whose float reductions differ: no test may depend on which.
torch.set_num_threads(int(os.environ.get("UNIVAE_TEST_THREADS", "1")))

CHARS = list(
    "我你他的是了不在有人这中大为上个国和也子时道出而要于就下得可年生自会那后能对着事其里所去行过家十用发天如然作方成者多日都三小军二无同么经法当起与好看学进种将还分此心前面又定见只主没公从"
)
VOCAB = (
    SPECIAL_TOKENS
    + CHARS
    + [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
)


def write_vocab(directory):
    (directory / "vocab.txt").write_text("".join(t + "\n" for t in VOCAB), encoding="utf-8")


def _tiny_hf(tmp_path_factory, kind, name, **extra):
    import transformers

    torch.manual_seed(0)
    common = dict(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **extra,
    )
    if kind.startswith("Bert"):
        config = transformers.BertConfig(**common)
    else:
        config = transformers.RoFormerConfig(**common)
    model = getattr(transformers, kind)(config).eval()
    with torch.no_grad():  # LayerNorm/bias inits are trivial (ones, zeros); randomise them so the test can fail
        for n, p in model.named_parameters():
            if "LayerNorm" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    directory = tmp_path_factory.mktemp(name)
    model.save_pretrained(directory)
    write_vocab(directory)
    return directory, model


@pytest.fixture(scope="session")
def hf_bert(tmp_path_factory):
    return _tiny_hf(tmp_path_factory, "BertForMaskedLM", "bert")


@pytest.fixture(scope="session")
def hf_roformer(tmp_path_factory):
    return _tiny_hf(tmp_path_factory, "RoFormerForMaskedLM", "roformer", embedding_size=16)


@pytest.fixture(scope="session")
def hf_dirs(hf_bert, hf_roformer):
    return {"bert": hf_bert[0], "roformer": hf_roformer[0]}


def random_joined(model, B=4, seed=0, lengths=None):
    """A joined batch [src | tgt] with varied source lengths, as univae.data.join builds it."""
    from univae.data import join

    c = model.config
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [c.maxlen - 2 - (3 * i) % (c.maxlen - 3) for i in range(B)]
    ids = torch.zeros(B, c.maxlen, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0] = 2  # [CLS]
        ids[i, 1 : n + 1] = torch.randint(5, c.vocab_size, (n,), generator=g)
        ids[i, n + 1] = 3  # [SEP]
    return join(ids)
