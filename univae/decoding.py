"""Decoding from z: the cached and the recompute decoder, decoding options, greedy / sampling / beam search.

    z -> CachedDecoder (one [CLS] K/V per latent layer from z, KV cache of target positions)
      -> greedy / sampling / beam search, one token per step -> ids -> detokenize -> text

The decoder sequence is [slot; target]: slot 0 stands for the source [CLS] (position 0, segment 0),
target t sits at position maxlen + t (segment 1), exactly where it sits in training
(`UniVAE.decoder_inputs`). Lower layers use `masks.independent(1)`: the target never sees the slot.
Latent layers use `masks.uniae(1)`: the target sees the slot, whose K/V there are those of
up_l(z_l) alone. So no source token is ever run; each step costs one token through the stack,
attending over at most maxlen + 1 cached keys.

`RecomputeDecoder` is the reference's way and the test reference: each step re-runs the whole
joined [src | tgt so far] sequence with z forced and reads the logits at the last fed position.

Both decoders have one interface, so every strategy runs on either:

    decoder(prefix)        prefix (N, t+1) target ids so far ([CLS] first) -> logits (N, V) for token t+1
    decoder.reorder(rows)  keep/duplicate rows (beam search)
"""

import contextlib
import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

import masks
from univae.attention import step_backend
from univae.tokenizer import CLS, MASK, PAD, SEP, detokenize

# ----------------------------------------------------------------------------- decoders


class KVCache:
    """Preallocated keys/values (N, H, S, D) indexed by slot (gpt-fast's KVCache).

    Written and reordered in place: the buffers keep their addresses for the decoder's lifetime,
    which a compiled step under CUDA graphs needs (it replays reads and writes at fixed addresses)."""

    def __init__(self, N, H, S, D, dtype, device):
        self.k = torch.zeros(N, H, S, D, dtype=dtype, device=device)
        self.v = torch.zeros(N, H, S, D, dtype=dtype, device=device)

    def update(self, slots, k, v):
        """Write k, v (N, H, n, D) at `slots` (LongTensor of n indices); return the full buffers to attend over.
        Under autocast k, v may come in another dtype than the cache's (RoFormer's rotary makes them fp32)."""
        self.k.index_copy_(2, slots, k.to(self.k.dtype))
        self.v.index_copy_(2, slots, v.to(self.v.dtype))
        return self.k, self.v

    def reorder(self, rows):
        self.k.copy_(self.k[rows])
        self.v.copy_(self.v[rows])


class CachedDecoder:
    """z (N, latent_dim) -> next-token logits, one new token per call, O(maxlen) work per token.

    Slot 0 of each latent layer's cache holds project_kv(up_j(z_j)) at position 0, written by
    reset(z). In lower layers slot 0 stays zero: the independent mask hides it from every target query
    (zeros, not garbage, because the dense backends still multiply masked keys).

    Attention backend (step_backend): eager runs as eager; every other backend runs its steps with
    sdpa on the dense mask row, except many-row batches under CPU bf16 autocast, which run eager.
    A step is one query against <= maxlen + 1 keys: a single FlexAttention block, so a BlockMask
    could skip nothing, and building one per step (or compiling flex for q_len = 1) would cost more
    than the step; 'split' has no joined layout to split here.

    compile_step: run the one-token step through torch.compile (CUDA: mode="reduce-overhead", i.e.
    CUDA graphs; CPU: Inductor). The step takes t as a tensor and gathers everything that depends
    on it (position, rotary rows, mask row, cache slot) by index, and the cache is updated in place,
    so every step has the same shapes, strides and buffers: one graph for all t, compiled on the
    first call (per batch shape N), never recompiled from one step to the next. `reset(z)` starts
    the next batch of the same size in the same buffers (decode_ids does), so under CUDA graphs a
    new batch replays the recorded graph instead of recording another.
    """

    def __init__(self, model, z, compile_step=False):
        c, tr = model.config, model.transformer
        N, S = z.shape[0], c.maxlen + 1  # slot 0 + maxlen target positions
        device, dtype = z.device, tr.embed.word.weight.dtype
        if torch.is_autocast_enabled(device.type):  # the projections hand K/V over in autocast's dtype
            dtype = torch.get_autocast_dtype(device.type)
        self.model, self.t = model, 0
        self.backend = step_backend(model.backend(device), N, device)
        self.caches = [KVCache(N, c.num_attention_heads, S, c.head_dim, dtype, device) for _ in tr.layers]
        lower = masks.materialize(masks.independent(1), S, S, device=device)[:, None]  # (1, 1, S, S)
        upper = masks.materialize(masks.uniae(1), S, S, device=device)[:, None]
        if self.backend == "eager":  # additive: every step row sees a key (attend)
            lower, upper = (
                torch.zeros(m.shape, device=device).masked_fill(~m, torch.finfo().min) for m in (lower, upper)
            )
        self.lower, self.upper = lower, upper
        self.in_latent = [l in model.latent_index for l in range(len(tr.layers))]
        self.steps = torch.arange(c.maxlen, device=device)  # step t's index as a tensor: self.steps[t:t + 1]
        self.positions = c.maxlen + self.steps  # target t at maxlen + t
        self.rope = tr.rope(self.positions)  # None for BERT, else (cos, sin) each (maxlen, D)
        self.rope0 = tr.rope(torch.zeros(1, dtype=torch.long, device=device))
        self.reset(z)
        self.compiled = compile_step
        # The step is called as a plain function of the decoder, never kept as a bound method: a
        # decoder holding its own bound method is a reference cycle, whose KV caches only a full
        # garbage-collector pass frees, so a long streamed input would grow by them pass after pass.
        self.step_fn = CachedDecoder._step
        if compile_step:
            for cache in self.caches:  # CUDA graphs may mutate an input only if its address is fixed
                # guard=False (torch 2.13's default; older ones guarded): a new decoder's
                # buffers re-record the CUDA graph instead of recompiling the step
                torch._dynamo.mark_static_address(cache.k, guard=False)
                torch._dynamo.mark_static_address(cache.v, guard=False)
            mode = "reduce-overhead" if device.type == "cuda" else None
            self.step_fn = torch.compile(CachedDecoder._step, mode=mode, dynamic=False)

    @property
    def rows(self):
        return self.caches[0].k.shape[0]

    def reset(self, z):
        """Start over from new codes z (same number of rows), in the same buffers."""
        if z.shape[0] != self.rows:
            raise ValueError(f"reset needs {self.rows} rows of z, got {z.shape[0]}")
        tr = self.model.transformer
        for cache in self.caches:
            cache.k.zero_()
            cache.v.zero_()
        zs = self.model.split_z(z)
        for l, j in self.model.latent_index.items():
            cls = self.model.up[j](zs[j].to(self.caches[l].k.dtype))[
                :, None
            ]  # (N, 1, d): the [CLS] input that z_j replaces
            k, v = tr.layers[l].project_kv(cls, self.rope0)
            self.caches[l].update(self.steps[:1], k, v)  # slot 0
        self.t = 0

    def __call__(self, prefix):
        t = prefix.shape[1] - 1
        assert t == self.t, f"the cached decoder takes one new token per call (expected prefix length {self.t + 1})"
        tok = prefix[:, -1:]  # (N, 1)
        if self.compiled:  # the same strides at every t: a compiled step guards on strides, and the
            # view has stride t + 1 (.contiguous() would keep it when N = 1)
            tok = tok.clone(memory_format=torch.contiguous_format)
        logits = self.step_fn(self, tok, self.steps[t : t + 1])
        self.t += 1
        # a CUDA graph's output buffer is overwritten by the next replay, and callers edit logits in place
        return logits.clone() if self.compiled else logits

    def _step(self, tok, t):
        """tok (N, 1) the newest target token, t (1,) its index -> logits (N, V) for token t + 1.

        t is a tensor, never a Python int, and only indexes (index_select, index_copy_): a Python
        slice at t would make t a constant of a compiled graph, recompiled at every step."""
        tr = self.model.transformer
        slot = t + 1  # target t lives in cache slot t + 1
        h = tr.embed(tok, torch.ones_like(tok), self.positions.index_select(0, t))
        rope = None if self.rope is None else tuple(r.index_select(0, t) for r in self.rope)  # (1, D) each
        lower, upper = self.lower.index_select(2, slot), self.upper.index_select(2, slot)  # (1, 1, 1, S) each
        rows = [upper if latent else lower for latent in self.in_latent]
        h = tr.run_layers(h, rows, self.backend, rope, caches=[(cache, slot) for cache in self.caches])
        return tr.logits(h[:, -1])

    def reorder(self, rows):
        for cache in self.caches:
            cache.reorder(rows)


class RecomputeDecoder:
    """The reference: every step runs the whole joined [src | tgt so far] through the model.

    The source is a dummy "[CLS] [SEP]": with z forced the target never sees it (tested in
    test_model.py), exactly how the reference decodes."""

    def __init__(self, model, z):
        c, tok = model.config, model.tokenizer
        self.model, self.z = model, z
        self.src = torch.full((z.shape[0], c.maxlen), c.pad_token_id, dtype=torch.long, device=z.device)
        self.src[:, 0], self.src[:, 1] = tok.token_to_id(CLS), tok.token_to_id(SEP)

    def __call__(self, prefix):
        c = self.model.config
        N, T = prefix.shape
        tgt = F.pad(prefix, (0, c.maxlen - T), value=c.pad_token_id)
        input_ids = torch.cat([self.src, tgt], dim=1)  # (N, 2*maxlen)
        token_type_ids = (torch.arange(2 * c.maxlen, device=prefix.device) >= c.maxlen).long().expand(N, -1)
        return self.model(input_ids, token_type_ids, z=self.z).logits[:, T - 1]

    def reorder(self, rows):
        self.z = self.z[rows]


# ----------------------------------------------------------------------------- decoding options


@dataclass
class Decoding:
    """How to pick tokens. Greedy by default; sampling if do_sample, or if any of temperature,
    top_k, top_p is given; beam search if beam_size > 1. sample.py's flags default to these."""

    beam_size: int = 1
    length_penalty: float = 0.6  # GNMT's alpha: beams ranked by log P / ((5 + len) / 6) ** alpha; 0 = raw log P
    do_sample: bool | None = None
    temperature: float | None = None  # None = 1.0
    top_k: int | None = None  # None or 0 = off
    top_p: float | None = None  # None or 1.0 = off
    no_repeat_ngram: int = 0  # ban any n-gram from occurring twice (HF's no_repeat_ngram_size); 0 = off
    seed: int | None = None  # seeds every draw of the call (prior, noise, tokens) without touching the global RNG
    batch_size: int = 256
    use_cache: bool = True  # False: RecomputeDecoder, the slow reference path
    compile_step: bool = (
        False  # torch.compile the cached decoder's one-token step (CachedDecoder); meant for CUDA graphs
    )

    def __post_init__(self):
        if not (isinstance(self.beam_size, int) and self.beam_size >= 1):
            raise ValueError(f"beam size must be a positive integer, got {self.beam_size!r}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.top_k is not None and not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top-k must be a non-negative integer, got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
        if not (isinstance(self.no_repeat_ngram, int) and self.no_repeat_ngram >= 0):
            raise ValueError(f"no-repeat-ngram must be a non-negative integer, got {self.no_repeat_ngram!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.sampling and self.beam_size > 1:
            raise ValueError("beam search does not sample: use --beam-size 1 with --temperature/--top-k/--top-p")
        if self.compile_step and not self.use_cache:
            raise ValueError(
                "compiling the decoding step needs the cached decoder: --compile does not go with --no-cache"
            )

    @property
    def sampling(self):
        if self.do_sample is not None:
            return bool(self.do_sample)
        return any(x is not None for x in (self.temperature, self.top_k, self.top_p))


# ----------------------------------------------------------------------------- logits processing


def ban_repeated_ngrams(logits, prefix, n):
    """HF's no_repeat_ngram_size: ban every token that would complete an n-gram already in prefix."""
    N, T = prefix.shape
    if n <= 0 or T + 1 < n:
        return logits
    for i, row in enumerate(prefix.tolist()):
        key = tuple(row[T - n + 1 :])
        banned = [row[j + n - 1] for j in range(T - n + 1) if tuple(row[j : j + n - 1]) == key]
        logits[i, banned] = -math.inf
    return logits


FIRST_CANDIDATES = 32  # tokens ranked first per row for a nucleus; GROWTH times more for rows it does not hold
GROWTH = 8


def candidates(logits, top_k=None, top_p=None, first=FIRST_CANDIDATES):
    """The tokens a sampling step may draw and their probabilities: softmax(logits) after top-k, then
    nucleus filtering (HF's order and rule: a token goes when the probability ranked above it already
    reaches top_p; the best token always stays). Returns (ids, probs), both (N, C); dropped tokens
    have probability 0, and C is the vocab unless a filter narrows it.

    The nucleus needs the tokens ranked by probability. A trained model's nucleus is a few tokens,
    so only the `first` best are ranked (`topk`); the rows whose nucleus reaches past them are ranked
    again GROWTH times wider, up to a sort of the whole vocab (near-flat distributions), and the
    other rows' candidates are padded with probability 0 to the widest."""
    ids, probs, wide, wider = _ranked(logits, top_k, top_p, first)
    if wide is not None:
        more_ids, more_probs = candidates(logits[wide], top_k, top_p, first=wider)
        pad = (0, more_ids.shape[-1] - ids.shape[-1])
        ids, probs = F.pad(ids, pad), F.pad(probs, pad)
        ids[wide], probs[wide] = more_ids, more_probs
    return ids, probs / probs.sum(-1, keepdim=True)


def sample_next(logits, top_k=None, top_p=None, first=FIRST_CANDIDATES):
    """One token per row of logits (N, V), from the distribution candidates() gives: the rows whose
    nucleus reaches past the `first` best are drawn on their own, ranked wider, so that no row is
    padded to another's width."""
    ids, probs, wide, wider = _ranked(logits, top_k, top_p, first)
    if wide is None:
        return draw(ids, probs)
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    narrow = ~wide
    out[narrow] = draw(ids[narrow], probs[narrow])
    out[wide] = sample_next(logits[wide], top_k, top_p, first=wider)
    return out


def _ranked(logits, top_k, top_p, first):
    """(ids, unnormalised probs, wide, wider) of candidates() before any row is ranked wider: wide
    (N,) bool marks the rows whose nucleus reaches past the `first` ranked (None when there are
    none), wider how many to rank for them next: GROWTH times more, or the whole vocab where a
    row's nucleus cannot fit in that (each token past the first is at most as likely as the last
    of them, so at least (top_p - their mass) / its probability more tokens stay: a near-flat
    row goes straight to the sort)."""
    N, V = logits.shape
    nucleus = top_p is not None and top_p < 1
    k = min(top_k or V, V)
    if k == V and not nucleus:
        return torch.arange(V, device=logits.device).expand(N, V), logits.softmax(-1), None, None
    c = min(first, V) if nucleus and k == V else k  # a top-k set is ranked whole
    values, ids = logits.topk(c, dim=-1)  # ranked, best first
    probs = (values - (values if c == k else logits).logsumexp(-1, keepdim=True)).exp()
    if not nucleus:
        return ids, probs, None, None
    total = probs.cumsum(-1)
    kept = probs.masked_fill(total - probs >= top_p, 0.0)  # what is ranked above a token reaches top_p
    wide = total[:, -1] < top_p  # the token after the last candidate would stay too
    if c == k or not bool(wide.any()):
        return ids, kept, None, None
    at_least = c + (top_p - total[wide, -1]) / probs[wide, -1]  # tokens the nucleus holds (inf where 0)
    wider = c * GROWTH if bool((at_least <= c * GROWTH).all()) else V
    return ids, kept, wide, wider


def draw(ids, probs):
    """One token per row from candidates() (probs need not sum to 1): inverse-CDF sampling, one
    uniform draw per row (the same distribution as torch.multinomial, which draws per vocab entry
    and costs far more)."""
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    j = torch.searchsorted(cdf, u, right=True)  # the first candidate whose cdf exceeds u: probability > 0
    last = torch.where(probs > 0, torch.arange(probs.shape[-1], device=probs.device), 0).amax(-1, keepdim=True)
    return ids.gather(-1, torch.minimum(j, last))[:, 0]  # u rounding up to the total stays on a real token


# ----------------------------------------------------------------------------- strategies


def greedy_or_sample(decoder, N, maxlen, special, opts, device, forced=None):
    """Up to maxlen - 1 new tokens per row, stopping rows at [SEP]; (N, <= maxlen) ids, [CLS] first.

    forced (N, maxlen - 1), optional: where >= 0, the token that step takes instead of the chosen one
    (a forced prefix of the target; augment keeps the start of a sentence that way)."""
    cls, sep, pad = special["cls"], special["sep"], special["pad"]
    prefix = torch.full((N, 1), cls, dtype=torch.long, device=device)
    done = torch.zeros(N, dtype=torch.bool, device=device)
    for _ in range(maxlen - 1):
        logits = _process(decoder(prefix).float(), prefix, special, opts)
        if opts.sampling:  # finished rows draw nothing: their next token is [PAD] anyway
            live = ~done
            next_tok = torch.full_like(done, pad, dtype=torch.long)
            next_tok[live] = sample_next(logits[live] / (opts.temperature or 1.0), opts.top_k, opts.top_p)
        else:
            next_tok = logits.argmax(-1)
        if forced is not None:
            f = forced[:, prefix.shape[1] - 1]
            next_tok = torch.where(f >= 0, f, next_tok)
        next_tok = next_tok.masked_fill(done, pad)  # finished rows idle on [PAD]
        prefix = torch.cat([prefix, next_tok[:, None]], dim=1)
        done |= next_tok == sep
        if bool(done.all()):
            break
    return prefix


def beam_search(decoder, B, K, maxlen, special, opts, device):
    """Batched beam search over B inputs x K beams; returns the best hypothesis per input (list of id lists).

    The decoder's rows are b*K + k. Each step keeps the 2K best continuations per input (HF's
    rule): those ending in [SEP] within the first K go to that input's finished list, the first K
    others stay alive. Finished hypotheses are ranked by GNMT's length-normalised score
    log P / ((5 + n) / 6) ** alpha, n counting [SEP]. An input is done when it has K finished
    and its best alive beam, normalised at the current length, cannot beat the worst of them
    (HF's early_stopping=False heuristic); beams alive at maxlen finish there."""
    cls, sep = special["cls"], special["sep"]
    lp = lambda n: ((5 + n) / 6) ** opts.length_penalty
    prefix = torch.full((B * K, 1), cls, dtype=torch.long, device=device)
    scores = torch.full((B, K), -math.inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: only one is alive, or each hypothesis appears K times
    finished = [[] for _ in range(B)]  # (normalised score, ids)
    done = [False] * B
    for t in range(maxlen - 1):
        logp = _process(decoder(prefix).float(), prefix, special, opts).log_softmax(-1)  # (B*K, V)
        V = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(B, K, V)).view(B, K * V)
        top, idx = cand.topk(2 * K, dim=-1)  # (B, 2K)
        beam, tok = idx // V, idx % V
        ends = tok == sep
        n_new = t + 1  # tokens generated so far, this one included
        for b, r in (ends & (torch.arange(2 * K, device=device) < K) & top.isfinite()).nonzero().tolist():
            if not done[b]:
                ids = prefix[b * K + beam[b, r]].tolist()[1:]
                finished[b].append((top[b, r].item() / lp(n_new), ids))
        # at most K candidates end in [SEP] (one token per beam), so at least K of the 2K go on
        keep = ends.int().argsort(dim=-1, stable=True)[:, :K]  # (B, K) first K non-[SEP] candidates
        scores = top.gather(1, keep)
        rows = (torch.arange(B, device=device)[:, None] * K + beam.gather(1, keep)).flatten()
        prefix = torch.cat([prefix[rows], tok.gather(1, keep).flatten()[:, None]], dim=1)
        decoder.reorder(rows)
        for b in range(B):
            if not done[b] and len(finished[b]) >= K:
                finished[b] = sorted(finished[b], key=lambda s: -s[0])[:K]
                done[b] = finished[b][-1][0] >= scores[b].max().item() / lp(n_new)
        if all(done):
            break
    for b in range(B):
        if not done[b]:  # reached maxlen: alive beams end there without [SEP]
            for k in range(K):
                if math.isfinite(scores[b, k].item()):
                    finished[b].append((scores[b, k].item() / lp(prefix.shape[1] - 1), prefix[b * K + k].tolist()[1:]))
    return [max(f, key=lambda s: s[0])[1] for f in finished]


def _process(logits, prefix, special, opts):
    """Ban tokens no target ever holds ([PAD], [CLS], [MASK]) and repeated n-grams."""
    logits[:, special["banned"]] = -math.inf
    return ban_repeated_ngrams(logits, prefix, opts.no_repeat_ngram)


def _special(tok):
    ids = {"cls": tok.token_to_id(CLS), "sep": tok.token_to_id(SEP), "pad": tok.token_to_id(PAD)}
    ids["banned"] = [i for i in (ids["pad"], ids["cls"], tok.token_to_id(MASK)) if i is not None]
    return ids


def _strip(ids, sep, pad):
    """Target ids after [CLS] -> tokens up to (without) the first [SEP]."""
    out = []
    for i in ids:
        if i == sep:
            break
        if i != pad:
            out.append(i)
    return out


def decode_ids(model, z, opts, forced=None):
    """z (N, latent_dim) -> N lists of token ids (no [CLS]/[SEP]), at most maxlen - 1 each.
    forced (N, maxlen - 1): tokens to force (>= 0) at each step, greedy or sampling only."""
    c = model.config
    if z.dim() != 2 or z.shape[1] != c.latent_dim:
        raise ValueError(f"z must have shape (N, {c.latent_dim}), got {tuple(z.shape)}")
    special = _special(model.tokenizer)
    make = partial(CachedDecoder, compile_step=opts.compile_step) if opts.use_cache else RecomputeDecoder
    if forced is not None and opts.beam_size > 1:
        raise ValueError("a forced prefix goes with greedy decoding or sampling, not beam search")
    out, decoder = [], None
    forced_batches = forced.to(model.device).split(opts.batch_size) if forced is not None else None
    for b, zb in enumerate(z.to(model.device).split(opts.batch_size)):
        N, K = zb.shape[0], opts.beam_size
        rows = zb.repeat_interleave(K, dim=0) if K > 1 else zb
        if opts.use_cache and decoder is not None and decoder.rows == rows.shape[0]:
            decoder.reset(rows)  # one set of cache buffers for every full batch
        else:
            decoder = make(model, rows)
        if K > 1:
            out += beam_search(decoder, N, K, c.maxlen, special, opts, zb.device)
        else:
            prefix = greedy_or_sample(
                decoder,
                N,
                c.maxlen,
                special,
                opts,
                zb.device,
                forced=forced_batches[b] if forced_batches is not None else None,
            )
            out += [row[1:] for row in prefix.tolist()]
    return [_strip(ids, special["sep"], special["pad"]) for ids in out]


@contextlib.contextmanager
def inference(model, seed):
    """no_grad, eval mode (restored after), and a private RNG stream if seeded."""
    was_training = model.training
    model.eval()
    devices = [model.device] if model.device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), rng:
            if seed is not None:
                torch.manual_seed(seed)
            yield
    finally:
        model.train(was_training)


def decode_texts(model, z, opts, forced=None):
    """Codes z -> sentences, decoded with opts (a Decoding); forced: target ids each row must start with."""
    return [detokenize(model.tokenizer, ids) for ids in decode_ids(model, z, opts, forced)]
