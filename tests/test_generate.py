"""Decoding: the cached decoder against recompute-everything decoding (the reference's way),
strategies against HF's logits processors and exhaustive search, latent-space operations
against their formulas."""

import gc
import itertools
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import univae
from univae import decoding
from univae import generate as G
from univae.attention import BACKENDS, STEP_EAGER_ROWS
from univae.tokenizer import build_tokenizer, detokenize
from univae.vmf import vmf_mean_cosine

DENSE_BACKENDS = [b for b in BACKENDS if b != "flex"]  # flex: test_flex_backend, kept minimal (compiles)


def _model(hf_dirs, kind, attn):
    torch.manual_seed(0)
    m = univae.UniVAE.from_pretrained(str(hf_dirs[kind]), maxlen=12, z_dim=8, attn=attn).eval()
    with torch.no_grad():  # a random init barely lets z matter; make it matter so a wrong latent slot shows
        for up in m.up:
            up.weight.mul_(300)
    return m


@pytest.fixture(params=["bert", "roformer"])
def model(request, hf_dirs):
    return _model(hf_dirs, request.param, "sdpa")


def _step_all(model, z, steps):
    """Feed the cached and the recompute decoder the same greedy prefix; their logits at every step."""
    cached, recompute = decoding.CachedDecoder(model, z), decoding.RecomputeDecoder(model, z)
    prefix = torch.full((z.shape[0], 1), model.tokenizer.token_to_id("[CLS]"))
    out = []
    for _ in range(steps):
        a, b = cached(prefix), recompute(prefix)
        out.append((a, b))
        prefix = torch.cat([prefix, a.argmax(-1, keepdim=True)], dim=1)
    return out, prefix


# ----------------------------------------------------------------------------- cached == recompute


@pytest.mark.parametrize("attn", DENSE_BACKENDS)
@pytest.mark.parametrize("kind", ["bert", "roformer"])
def test_cached_logits_equal_recompute_at_every_step(hf_dirs, kind, attn):
    m = _model(hf_dirs, kind, attn)
    torch.manual_seed(1)
    z = m.sample_prior(3)
    with torch.no_grad():
        steps, prefix = _step_all(m, z, m.config.maxlen - 1)
        for t, (cached, recompute) in enumerate(steps):
            torch.testing.assert_close(cached, recompute, atol=1e-5, rtol=0, msg=f"step {t}")
        teacher = m.decode_logits(z, prefix[:, :-1])  # teacher forcing on the same prefix
        torch.testing.assert_close(torch.stack([c for c, _ in steps], 1), teacher, atol=1e-5, rtol=0)
        # the test can fail: another z, or a cache without the latent slot, changes the logits
        other = decoding.CachedDecoder(m, m.sample_prior(3))(prefix[:, :1])
        assert (other - steps[0][0]).abs().max() > 1e-2
        empty = decoding.CachedDecoder(m, z)
        for cache in empty.caches:
            cache.k.zero_(), cache.v.zero_()
        assert (empty(prefix[:, :1]) - steps[0][0]).abs().max() > 1e-2


@pytest.mark.parametrize("attn", DENSE_BACKENDS)
def test_greedy_and_beam_outputs_identical_cached_and_recompute(model, attn):
    model.config.attn = attn
    torch.manual_seed(2)
    z = model.sample_prior(4)
    greedy = model.generate(z)
    assert greedy == model.generate(z, use_cache=False)
    assert decoding.decode_ids(model, z, decoding.Decoding(beam_size=3)) == decoding.decode_ids(
        model, z, decoding.Decoding(beam_size=3, use_cache=False)
    )
    assert model.generate(z, beam_size=1) == greedy


def test_flex_backend(hf_dirs):
    """flex: the one-token steps run on sdpa (CachedDecoder's docstring). Checked against flex
    recompute for two steps and flex teacher forcing at every step. Shapes (4 rows, full maxlen)
    match test_model.py's flex tests, so in a full run flex compiles nothing new."""
    m = _model(hf_dirs, "roformer", "flex")
    torch.manual_seed(3)
    z = m.sample_prior(4)
    with torch.no_grad():
        cached, recompute = decoding.CachedDecoder(m, z), decoding.RecomputeDecoder(m, z)
        prefix = torch.full((4, 1), m.tokenizer.token_to_id("[CLS]"))
        steps = []
        for t in range(m.config.maxlen - 1):
            steps.append(cached(prefix))
            if t < 2:
                torch.testing.assert_close(steps[-1], recompute(prefix), atol=1e-5, rtol=0)
            prefix = torch.cat([prefix, steps[-1].argmax(-1, keepdim=True)], dim=1)
        teacher = m.decode_logits(z, prefix)[:, :-1]
    torch.testing.assert_close(torch.stack(steps, 1), teacher, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rows", [3, STEP_EAGER_ROWS])
@pytest.mark.parametrize("kind", ["bert", "roformer"])
def test_cached_decoder_runs_under_bf16_autocast_with_a_bf16_cache(hf_dirs, kind, rows):
    """Under autocast the projections hand K/V over in bf16: the cache is bf16 (a fp32 one made
    index_copy_ fail), and the logits stay those of the recompute decoder under the same autocast,
    within bf16 round-off, with sdpa steps for a few rows and eager ones for a batch of many."""
    m = _model(hf_dirs, kind, "sdpa")
    torch.manual_seed(1)
    z = m.sample_prior(rows)
    assert decoding.CachedDecoder(m, z).backend == "sdpa"  # fp32: sdpa at any batch size
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert decoding.CachedDecoder(m, z).caches[0].k.dtype == torch.bfloat16
        assert decoding.CachedDecoder(m, z).backend == ("eager" if rows >= STEP_EAGER_ROWS else "sdpa")
        steps, _ = _step_all(m, z, m.config.maxlen - 1)
        texts = m.generate(z, top_p=0.9, seed=0)
    for t, (cached, recompute) in enumerate(steps):
        scale = recompute.float().abs().max().item()
        torch.testing.assert_close(cached.float(), recompute.float(), atol=0.05 * scale, rtol=0, msg=f"step {t}")
    assert len(texts) == rows and all(isinstance(s, str) for s in texts)


# ----------------------------------------------------------------------------- compiled step


@pytest.fixture
def fresh_dynamo():
    """An empty dynamo cache, so the test sees its own compiles; Inductor compiles in-process
    (no worker pool on a shared machine)."""
    torch._dynamo.reset()
    counters.clear()
    with torch._inductor.config.patch(compile_threads=1):
        yield
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", ["bert", "roformer"])
def test_compiled_step_equals_eager_without_recompiling(hf_dirs, kind, fresh_dynamo):
    """compile_step: the same logits as the eager cached decoder at every step, from one graph
    compiled at the first step and reused at every later t and by a new decoder of the same batch size.
    One row: with N = 1 a view of the prefix looks contiguous whatever its strides, so a step that
    passed one would recompile at every t."""
    m = _model(hf_dirs, kind, "sdpa")
    torch.manual_seed(14)
    z = m.sample_prior(1)
    with torch.no_grad():
        eager, compiled = decoding.CachedDecoder(m, z), decoding.CachedDecoder(m, z, compile_step=True)
        prefix = torch.full((1, 1), m.tokenizer.token_to_id("[CLS]"))
        for t in range(5):
            with torch._dynamo.config.patch(error_on_recompile=t > 0):
                got = compiled(prefix)
            want = eager(prefix)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"step {t}")
            prefix = torch.cat([prefix, want.argmax(-1, keepdim=True)], dim=1)
        other = m.sample_prior(1)
        with torch._dynamo.config.patch(error_on_recompile=True):
            got = decoding.CachedDecoder(m, other, compile_step=True)(prefix[:, :1])
        torch.testing.assert_close(got, decoding.CachedDecoder(m, other)(prefix[:, :1]), atol=1e-5, rtol=0)
    assert counters["stats"]["unique_graphs"] == 1  # one graph: no graph break, no recompile
    freed = weakref.ref(compiled)
    del compiled
    assert freed() is None  # the compiled step holds no reference to its decoder (see the next test)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_decoding_leaves_no_reference_cycle(model, beam_size):
    """What decoding allocates is freed by reference counting when it returns. A cycle (a decoder
    holding its own bound method, say) keeps the KV caches alive until a full garbage-collector
    pass, which a process with many long-lived objects makes rarely: sample.py --input over a long
    file grew by the caches of every pass. Only decoding's own objects are counted: other garbage
    (from earlier tests, first-call setup) may turn up in the same window."""
    z = model.sample_prior(3)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        with torch.no_grad():
            model.generate(z, beam_size=beam_size)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if isinstance(o, (decoding.CachedDecoder, torch.Tensor))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


def test_generate_compiled_equals_eager(hf_dirs, fresh_dynamo):
    """Greedy and beam search (whose reorder rewrites the cache in place) give the same text with
    compile_step; beam search's 1 input x 3 beams reuses greedy's 3-row graph. RoFormer only: the
    step test covers both backbones, and each compile costs seconds."""
    model = _model(hf_dirs, "roformer", "sdpa")
    torch.manual_seed(15)
    z = model.sample_prior(3)
    assert model.generate(z, compile_step=True) == model.generate(z)
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert model.generate(z[:1], beam_size=3, compile_step=True) == model.generate(z[:1], beam_size=3)
    with pytest.raises(ValueError, match="cached decoder"):
        decoding.Decoding(compile_step=True, use_cache=False)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_batches_reuse_one_cached_decoder(hf_dirs, monkeypatch, beam_size):
    """decode_ids builds one CachedDecoder and resets it in place for every later batch of the same
    size (a CUDA graph then replays in the same buffers); a smaller last batch gets its own. The
    text is what one fresh decoder per sentence gives."""
    model = _model(hf_dirs, "bert", "sdpa")
    torch.manual_seed(16)
    z = model.sample_prior(7)
    built = []

    class Counting(decoding.CachedDecoder):
        def __init__(self, *a, **k):
            built.append(1)
            super().__init__(*a, **k)

    monkeypatch.setattr(decoding, "CachedDecoder", Counting)
    batched = model.generate(z, batch_size=3, beam_size=beam_size)
    assert len(built) == 2  # rows 0-2 and 3-5 share one decoder; row 6 is a batch of one
    assert batched == [model.generate(z[i : i + 1], beam_size=beam_size)[0] for i in range(7)]
    decoder = decoding.CachedDecoder(model, z[:3])
    with pytest.raises(ValueError, match="3 rows"):
        decoder.reset(z[:2])


# ----------------------------------------------------------------------------- strategies

SPECIAL = {"cls": 2, "sep": 3, "pad": 0, "banned": [0, 2]}


class TableDecoder:
    """A toy decoder whose next-token logits are a fixed random function of the prefix."""

    def __init__(self, N, V, seed=0):
        self.N, self.V, self.seed = N, V, seed

    def logits_of(self, ids):
        g = torch.Generator().manual_seed(hash((self.seed, *ids)) % (1 << 31))
        return 2 * torch.randn(self.V, generator=g)

    def __call__(self, prefix):
        return torch.stack([self.logits_of(tuple(row)) for row in prefix.tolist()])

    def reorder(self, rows):
        pass


def _brute_force(decoder, maxlen, alpha):
    """Best sequence by GNMT-normalised log P over every sequence of <= maxlen - 1 tokens."""
    lp = lambda n: ((5 + n) / 6) ** alpha
    tokens = [t for t in range(decoder.V) if t not in SPECIAL["banned"]]
    best = (-math.inf, None)
    for n in range(1, maxlen):
        for seq in itertools.product(tokens, repeat=n):
            if SPEC_SEP in seq[:-1]:
                continue
            if seq[-1] != SPEC_SEP and n < maxlen - 1:
                continue
            logp = 0.0
            for i, tok in enumerate(seq):
                logits = decoder.logits_of((SPECIAL["cls"], *seq[:i]))
                logits[SPECIAL["banned"]] = -math.inf
                logp += logits.log_softmax(-1)[tok].item()
            best = max(best, (logp / lp(n), list(seq[:-1] if seq[-1] == SPEC_SEP else seq)))
    return best[1]


SPEC_SEP = SPECIAL["sep"]


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_finds_the_exhaustive_optimum(alpha):
    maxlen, V, K = 5, 6, 32  # 4 free tokens, beams wider than every prefix set: beam search is exact
    opts = decoding.Decoding(beam_size=K, length_penalty=alpha)
    for seed in range(3):
        dec = TableDecoder(2 * K, V, seed)
        got = decoding.beam_search(dec, 2, K, maxlen, SPECIAL, opts, "cpu")
        want = _brute_force(dec, maxlen, alpha)
        assert got[0] == want and got[1] == want, seed


def test_beam_search_is_batched_per_input(model):
    torch.manual_seed(4)
    z = model.sample_prior(3)
    together = model.generate(z, beam_size=3)
    alone = [model.generate(z[i : i + 1], beam_size=3)[0] for i in range(3)]
    assert together == alone


def test_sampling_candidates_match_hf_filters():
    """candidates() against HF's top-k and top-p warpers then softmax: through the ranked-first path
    (a peaked distribution) and the sort of the whole vocab (a flat one), -inf entries included."""
    from transformers import TopKLogitsWarper, TopPLogitsWarper

    def hf(logits, k, p):
        if k:
            logits = TopKLogitsWarper(k)(None, logits.clone())
        if p is not None:
            logits = TopPLogitsWarper(p)(None, logits.clone())
        return logits.softmax(-1)

    torch.manual_seed(5)
    # flat rows: the nucleus reaches past `first`; peaked ones: it does not; and a batch of both
    scales = [torch.full((8, 1), s) for s in (0.1, 3.0, 8.0)] + [torch.tensor([[0.1], [8.0]]).repeat(4, 1)]
    for scale in scales:
        logits = scale * torch.randn(8, 50)
        logits[:, :2] = -math.inf  # banned tokens
        for k, p in [
            (None, None),
            (1, None),
            (5, None),
            (50, None),
            (None, 0.05),
            (None, 0.5),
            (None, 0.9),
            (None, 1.0),
            (5, 0.5),
            (20, 0.9),
        ]:
            for first in (4, 256):
                ids, probs = decoding.candidates(logits, top_k=k, top_p=p, first=first)
                got = torch.zeros_like(logits).scatter(-1, ids, probs)
                torch.testing.assert_close(
                    got, hf(logits, k, p), msg=f"scale {scale} top-k {k} top-p {p} first {first}"
                )


def test_draw_samples_the_candidates_distribution(monkeypatch):
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.2, 0.3, 0.0]]).expand(60_000, 6)
    ids = torch.arange(6).expand(60_000, 6) + 10
    torch.manual_seed(0)
    counts = torch.bincount(decoding.draw(ids, probs) - 10, minlength=6) / 60_000
    torch.testing.assert_close(counts, probs[0], atol=0.01, rtol=0)  # 3 sigma is under 0.006
    assert counts[[0, 2, 5]].sum() == 0  # never a token of probability 0
    for u in (0.0, 1.0):  # the ends of the uniform draw, 1.0 standing for u * total rounding up to the total
        monkeypatch.setattr(torch, "rand", lambda n, _, u=u, **kw: torch.full((n, 1), u))
        assert decoding.draw(ids[:2], probs[:2]).tolist() == [11 if u == 0 else 14] * 2


def test_sample_next_draws_from_the_candidates_of_each_row():
    """sample_next splits a batch by how wide each row's nucleus is (ranked 4, then 32, then the
    whole vocab of 300): each row's draws follow candidates() for that row, peaked and flat rows
    interleaved, all rows wide included."""
    torch.manual_seed(3)
    rows = torch.stack([8.0 * torch.randn(300), 0.05 * torch.randn(300), 1.5 * torch.randn(300)])
    rows[:, 0] = -math.inf  # a banned token
    for which in ([0, 1, 2], [1]):
        n = 20_000
        logits = rows[which].repeat(n, 1)  # rows interleaved: r0 r1 r2 r0 r1 r2 ...
        got = decoding.sample_next(logits, top_p=0.9, first=4).view(n, len(which))
        for j, r in enumerate(which):
            ids, probs = decoding.candidates(rows[r : r + 1], top_p=0.9, first=4)
            want = torch.zeros(300).scatter(0, ids[0], probs[0])
            counts = torch.bincount(got[:, j], minlength=300) / n
            torch.testing.assert_close(counts, want, atol=0.012, rtol=0, msg=f"row {r}")
            assert counts[want == 0].sum() == 0  # never a token outside the nucleus


def test_no_repeat_ngram_matches_hf():
    from transformers import NoRepeatNGramLogitsProcessor

    torch.manual_seed(6)
    prefix = torch.randint(0, 4, (16, 9))  # a small alphabet: many repeats
    logits = torch.randn(16, 6)
    for n in (1, 2, 3, 10):
        ours = decoding.ban_repeated_ngrams(logits.clone(), prefix, n)
        torch.testing.assert_close(ours, NoRepeatNGramLogitsProcessor(n)(prefix, logits.clone()))


def test_sampling_is_seeded_and_top_k_1_is_greedy(model):
    torch.manual_seed(7)
    z = model.sample_prior(4)
    a = model.generate(z, temperature=1.0, seed=0)
    assert a == model.generate(z, temperature=1.0, seed=0)
    assert a != model.generate(z, temperature=1.0, seed=1)
    assert model.generate(z, top_k=1, seed=3) == model.generate(z)
    assert model.generate(z, top_p=1e-6, seed=3) == model.generate(z)
    state = torch.random.get_rng_state()
    model.sample(2, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # a seeded call leaves the global RNG alone


def test_greedy_stops_at_sep_or_maxlen():
    class StopDecoder:  # row 0 says [SEP] at its third token, row 1 never does
        def __call__(self, prefix):
            logits = torch.zeros(2, 6)
            logits[:, 4] = 1.0
            if prefix.shape[1] == 3:
                logits[0, SPEC_SEP] = 5.0
            logits[1, SPEC_SEP] = -5.0
            return logits

    prefix = decoding.greedy_or_sample(StopDecoder(), 2, 8, SPECIAL, decoding.Decoding(), "cpu")
    rows = [decoding._strip(r[1:], SPEC_SEP, 0) for r in prefix.tolist()]
    assert rows == [[4, 4], [4] * 7]  # at most maxlen - 1 tokens


def test_outputs_are_aligned_and_short_enough(model):
    torch.manual_seed(8)
    out = decoding.decode_ids(model, model.sample_prior(5), decoding.Decoding())
    assert len(out) == 5 and all(len(ids) <= model.config.maxlen - 1 for ids in out)
    assert len(model.generate(model.sample_prior(5), batch_size=2)) == 5
    with pytest.raises(ValueError, match="shape"):
        model.generate(torch.zeros(2, 3))


def test_detokenize_chinese():
    tok = build_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "我", "是", "i", "##p", "##hone", "ok", "，"])
    ids = lambda s: tok.encode(s, add_special_tokens=False).ids
    assert detokenize(tok, [2, *ids("我是 iphone ok，我"), 3, 0]) == "我是iphone ok，我"
    assert detokenize(tok, ids("我 是 龘")) == "我是[UNK]"


# ----------------------------------------------------------------------------- latent-space operations


def _layers_on_sphere(model, z):
    for zl in model.split_z(z):
        torch.testing.assert_close(zl.norm(dim=-1), torch.ones(zl.shape[:-1]))


@pytest.mark.parametrize("spec", ["0:3", "0:8", "2:11", "0:4,12:16", "-5:", ":1", "15"])
def test_edit_keeps_untouched_dims_exactly(model, spec):
    torch.manual_seed(9)
    z = model.sample_prior(1)[0]
    index, _ = G.parse_dims(spec, z.numel())
    edited = G.edit_z(model, z, spec, 5)
    untouched = torch.ones(z.numel(), dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(edited[:, untouched], z[untouched].expand(5, -1))
    assert (edited[:, index] != z[index]).all()
    _layers_on_sphere(model, edited)


def test_fill_spheres():
    """Partly replaced layers: kept dims to the bit, the replaced part's direction kept and its norm
    what the layer has left; wholly replaced and untouched layers left exactly as they were."""
    torch.manual_seed(17)
    z = torch.cat(
        [F.normalize(torch.randn(4, 8), dim=-1), 3 * torch.randn(4, 8), F.normalize(torch.randn(4, 8), dim=-1)], 1
    )
    replaced = torch.tensor([1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15])  # 3 dims of layer 0, all of layer 1, none of 2
    drawn = z.clone()
    drawn[:, replaced] = torch.randn(4, len(replaced))
    out = G.fill_spheres(drawn.clone(), replaced, 8)
    assert torch.equal(out[:, 8:], drawn[:, 8:])
    kept = [0, 4, 5, 6, 7]
    assert torch.equal(out[:, kept], z[:, kept])
    room = (1 - z[:, kept].pow(2).sum(-1, keepdim=True)).sqrt()
    torch.testing.assert_close(out[:, 1:4], F.normalize(drawn[:, 1:4], dim=-1) * room)
    torch.testing.assert_close(out[:, :8].norm(dim=-1), torch.ones(4))


def test_edit_several_sentences(model):
    texts = ["我是中国人", "你好"]
    out, z = G.edit(model, texts, "0:4", 3, return_z=True, seed=0)
    assert len(out) == 6 and z.shape == (6, 16)
    base = model.encode(texts)
    assert torch.equal(z[:, 4:], base[:, 4:].repeat_interleave(3, dim=0))  # each sentence's variants together
    assert out[:3] == G.edit(model, texts[0], "0:4", 3, seed=0)  # the first sentence's draws come first


def test_edit_gaussian_branch_is_plain_replacement(model):
    torch.manual_seed(10)
    z = 3 * torch.randn(16)
    model.family.space = "euclidean"  # the branch only (generate.py branches on the family's space); still vMF
    try:
        torch.manual_seed(0)
        edited = G.edit_z(model, z, "2:11", 4)
        torch.manual_seed(0)
        prior = model.sample_prior(4)
        mid = G.interpolate_z(model, z, -z, 3)[1]
        d = G.analogy_z(model, z, 2 * z, -z)
    finally:
        del model.family.space
    torch.testing.assert_close(edited[:, 2:11], prior[:, 2:11], rtol=0, atol=0)
    assert torch.equal(edited[:, :2], z[:2].expand(4, -1)) and torch.equal(edited[:, 11:], z[11:].expand(4, -1))
    torch.testing.assert_close(mid, torch.zeros(16))
    torch.testing.assert_close(d, torch.zeros(16))


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0:4", [(0, 4)]),
        ("0:2,14:16", [(0, 2), (14, 16)]),
        ("-4:", [(12, 16)]),
        (":3", [(0, 3)]),
        (":", [(0, 16)]),
        ("-4:-2", [(12, 14)]),
        ("7", [(7, 8)]),
        ("-1", [(15, 16)]),
        (slice(2, 5), [(2, 5)]),
    ],
)
def test_parse_dims(spec, expected):
    index, ranges = G.parse_dims(spec, 16)
    assert ranges == expected
    assert index.tolist() == sorted({d for a, b in expected for d in range(a, b)})


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0:17", "outside"),
        ("-17:", "outside"),
        ("16", "outside"),
        ("4:4", "empty"),
        ("5:2", "empty"),
        ("16:", "empty"),
        ("0:4:2", "no step"),
        ("a:b", "malformed"),
        ("", "malformed"),
        ("0:4,", "malformed"),
        ("1:2:", "no step"),
    ],
)
def test_parse_dims_rejects(spec, message):
    with pytest.raises(ValueError, match=message):
        G.parse_dims(spec, 16)


def test_interpolate_is_slerp_per_layer(model):
    torch.manual_seed(11)
    za, zb = model.sample_prior(2)
    path = G.interpolate_z(model, za, zb, 5)
    torch.testing.assert_close(path[0], za)
    torch.testing.assert_close(path[-1], zb)
    _layers_on_sphere(model, path)
    for a, b, p in zip(model.split_z(za), model.split_z(zb), model.split_z(path)):
        angle = torch.acos((a * b).sum().clamp(-1, 1))
        steps = torch.acos((p[1:] * p[:-1]).sum(-1).clamp(-1, 1))  # equal angles along the great circle
        torch.testing.assert_close(steps, (angle / 4).expand(4), atol=1e-5, rtol=0)
        normal = torch.linalg.svd(torch.stack([a, b])).Vh[2:]  # the path stays in span(a, b)
        torch.testing.assert_close(p @ normal.T, torch.zeros(5, normal.shape[0]), atol=1e-5, rtol=0)


def test_analogy_is_renormalised_sum(model):
    torch.manual_seed(12)
    za, zb, zc = model.sample_prior(3)
    d = G.analogy_z(model, za, zb, zc)
    want = torch.cat([F.normalize(c + b - a, dim=-1) for a, b, c in zip(*(model.split_z(x) for x in (za, zb, zc)))])
    torch.testing.assert_close(d, want)
    torch.testing.assert_close(G.analogy_z(model, za, za, zc), zc)  # a : a :: c : c


def test_perturb_z_matches_the_vmf_posterior(model):
    torch.manual_seed(13)
    z = model.sample_prior(1)
    torch.testing.assert_close(G.perturb_z(model, z, 3, 0.0), z.expand(3, -1))
    around = G.perturb_z(model, z, 20000, 1.0)
    _layers_on_sphere(model, around)
    cos = torch.stack([(a * b).sum(-1) for a, b in zip(model.split_z(around), model.split_z(z))])
    assert abs(cos.mean().item() - vmf_mean_cosine(model.config.kappa, model.config.z_dim)) < 0.01
    half = G.perturb_z(model, z, 20000, 0.5)
    half_angle = torch.stack(
        [torch.acos((a * b).sum(-1).clamp(-1, 1)) for a, b in zip(model.split_z(half), model.split_z(z))]
    )
    full_angle = torch.acos(cos.clamp(-1, 1))
    assert abs(half_angle.mean().item() - full_angle.mean().item() / 2) < 0.01


def test_perturb_z_spreads_per_layer(model):
    """One spread per latent layer: a layer at 0 is z's own slice exactly, a layer at 1 is the
    posterior (mean cosine as in the analytic vMF), and a count that is not the layer count is named."""
    torch.manual_seed(14)
    z = model.sample_prior(1)
    k = model.config.num_latent_layers
    spreads = [0.0] + [1.0] * (k - 1)
    around = G.perturb_z(model, z, 20000, spreads)
    _layers_on_sphere(model, around)
    layers, z_layers = model.split_z(around), model.split_z(z)
    assert torch.equal(layers[0], z_layers[0].expand(20000, -1))
    want = vmf_mean_cosine(model.config.kappa, model.config.z_dim)
    for a, b in zip(layers[1:], z_layers[1:]):
        assert abs((a * b).sum(-1).mean().item() - want) < 0.01
    assert G.layer_spreads(model, 0.5) == [0.5] * k
    with pytest.raises(ValueError, match=f"{k} latent layers"):
        G.perturb_z(model, z, 2, [1.0] * (k + 1))
    with pytest.raises(ValueError, match="non-negative"):
        G.augment(model, ["你好"], 2, spread=[1.0] * (k - 1) + [-1.0])


# ----------------------------------------------------------------------------- the API


def test_api(model):
    texts = ["我是中国人", "你好", "他在家里看书"]
    out = model.reconstruct(texts)
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert out == model.generate(model.encode(texts))
    assert len(model.sample(4, seed=0)) == 4 and model.sample(4, seed=0) == model.sample(4, seed=0)
    edited, z = G.edit(model, texts[0], "0:4", 3, return_z=True)
    assert len(edited) == 3 and torch.equal(z[:, 4:], model.encode(texts[:1])[:, 4:].expand(3, -1))
    assert len(model.interpolate(texts[0], texts[1], 4)) == 4
    assert len(model.analogy(*texts, n=3)) == 3
    assert [len(v) <= 3 for v in G.augment(model, texts, 3)] == [True] * 3
    with pytest.warns(UserWarning, match="truncated"):
        model.reconstruct(["我" * 30])
    with pytest.raises(ValueError, match="empty text"):
        model.reconstruct(["我", " "])
    with pytest.raises(TypeError):
        model.sample(2, beam=3)  # a misspelt option is an error, not ignored
