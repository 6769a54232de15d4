"""Decoding from z, and the latent-space operations built on it (DESIGN.md, "Decoding").

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
from univae.tokenizer import CLS, MASK, PAD, SEP, detokenize, encode_texts

# ----------------------------------------------------------------------------- decoders


class KVCache:
    """Preallocated keys/values (N, H, S, D) indexed by slot (gpt-fast's KVCache).

    Written and reordered in place: the buffers keep their addresses for the decoder's lifetime,
    which a compiled step under CUDA graphs needs (it replays reads and writes at fixed addresses)."""

    def __init__(self, N, H, S, D, dtype, device):
        self.k = torch.zeros(N, H, S, D, dtype=dtype, device=device)
        self.v = torch.zeros(N, H, S, D, dtype=dtype, device=device)

    def update(self, slots, k, v):
        """Write k, v (N, H, n, D) at `slots` (LongTensor of n indices); return the full buffers to attend over."""
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k, self.v

    def reorder(self, rows):
        self.k.copy_(self.k[rows])
        self.v.copy_(self.v[rows])


class CachedDecoder:
    """z (N, latent_dim) -> next-token logits, one new token per call, O(maxlen) work per token.

    Slot 0 of each latent layer's cache holds project_kv(up_j(z_j)) at position 0, written by
    reset(z). In lower layers slot 0 stays zero: the independent mask hides it from every target query
    (zeros, not garbage, because the dense backends still multiply masked keys).

    Attention backend: eager runs as eager; every other backend runs its steps with sdpa on the
    dense mask row. A step is one query against <= maxlen + 1 keys: a single FlexAttention block,
    so a BlockMask could skip nothing, and building one per step (or compiling flex for q_len = 1)
    would cost more than the step; 'split' has no joined layout to split here.

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
        self.model, self.t = model, 0
        backend = model.backend(device)
        self.backend = "eager" if backend == "eager" else "sdpa"
        self.caches = [KVCache(N, c.num_attention_heads, S, c.head_dim, dtype, device) for _ in tr.layers]
        lower = masks.materialize(masks.independent(1), S, S, device=device)[:, None]  # (1, 1, S, S)
        upper = masks.materialize(masks.uniae(1), S, S, device=device)[:, None]
        self.masks = [upper if l in model.latent_index else lower for l in range(len(tr.layers))]
        self.steps = torch.arange(c.maxlen, device=device)  # step t's index as a tensor: self.steps[t:t + 1]
        self.positions = c.maxlen + self.steps  # target t at maxlen + t
        self.rope = tr.rope(self.positions)  # None for BERT, else (cos, sin) each (maxlen, D)
        self.rope0 = tr.rope(torch.zeros(1, dtype=torch.long, device=device))
        self.reset(z)
        self.compiled = compile_step
        self.step = self._step
        if compile_step:
            for cache in self.caches:  # CUDA graphs may mutate an input only if its address is fixed
                # guard=False (torch 2.13's default; older ones guarded): a new decoder's
                # buffers re-record the CUDA graph instead of recompiling the step
                torch._dynamo.mark_static_address(cache.k, guard=False)
                torch._dynamo.mark_static_address(cache.v, guard=False)
            if device.type == "cuda":
                self.step = torch.compile(self._step, mode="reduce-overhead", dynamic=False)
            else:
                self.step = torch.compile(self._step, dynamic=False)

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
        logits = self.step(tok, self.steps[t : t + 1])
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
        for layer, mask, cache in zip(tr.layers, self.masks, self.caches):
            h = layer(h, mask.index_select(2, slot), self.backend, rope, cache=(cache, slot))  # mask (1, 1, 1, S)
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


def filter_logits(logits, top_k=None, top_p=None):
    """Top-k then nucleus filtering (HF's order); filtered entries become -inf, the best token always stays."""
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        remove_sorted = probs.cumsum(-1) - probs >= top_p  # the mass ranked above this token already reaches top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, -math.inf)
    return logits


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
        if opts.sampling:
            logits = filter_logits(logits / (opts.temperature or 1.0), opts.top_k, opts.top_p)
            next_tok = torch.multinomial(logits.softmax(-1), 1)[:, 0]
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
def _inference(model, seed):
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


def _texts(model, z, opts, forced=None):
    return [detokenize(model.tokenizer, ids) for ids in decode_ids(model, z, opts, forced)]


# ----------------------------------------------------------------------------- latent-space operations


def _space(model):
    """Where the family's codes live (latents.py): "sphere" (vMF), "euclidean" (Gaussian, mixture)
    or "codebook" (VQ); the latent arithmetic below branches on it."""
    return model.family.space


def _per_layer(model, z, fn):
    """Apply fn(z_l, j) to each latent layer's slice of z (..., latent_dim) and concatenate back."""
    return torch.cat([fn(zl, j) for j, zl in enumerate(model.split_z(z))], dim=-1)


def _snap(model, z):
    """VQ: each layer's slice of z replaced by its nearest code vector."""
    return _per_layer(model, z, lambda zl, j: model.family.snap(zl, j).to(z.dtype))


def slerp(a, b, t):
    """Spherical interpolation between unit vectors a, b (..., k) at weights t (T, 1) -> (T, ..., k).

    Nearly parallel vectors fall back to normalised linear interpolation (sin(omega) ~ 0)."""
    cos = (a * b).sum(-1, keepdim=True).clamp(-1, 1)
    omega = torch.acos(cos)
    so = torch.sin(omega)
    t = t.view(-1, *([1] * a.dim()))
    safe = so.abs() > 1e-6
    wa = torch.where(safe, torch.sin((1 - t) * omega) / torch.where(safe, so, 1), 1 - t)
    wb = torch.where(safe, torch.sin(t * omega) / torch.where(safe, so, 1), t)
    out = wa * a + wb * b
    return torch.where(safe, out, F.normalize(out, dim=-1))


def interpolate_z(model, za, zb, steps):
    """`steps` codes from za to zb (D,), endpoints included: slerp per vMF layer, linear otherwise.

    VQ decodes only codebook vectors, so each point of the linear path is snapped to the nearest code
    per layer: the path visits the codes between the ends (repeating one while it stays nearest)."""
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    t = torch.linspace(0, 1, steps, device=za.device)[:, None]
    if _space(model) == "codebook":
        return _snap(model, torch.lerp(za[None], zb[None], t))
    if _space(model) != "sphere":
        return torch.lerp(za[None], zb[None], t)
    return torch.cat([slerp(a, b, t) for a, b in zip(model.split_z(za), model.split_z(zb))], dim=-1)


def analogy_z(model, za, zb, zc):
    """z_c + z_b - z_a ("a is to b as c is to ?"), put back on each vMF layer's sphere.

    A vMF layer where the sum nearly cancels has no direction; it keeps z_c's. VQ: snapped to the
    nearest code per layer."""
    return _into_code_space(model, zc + zb - za, zc)


def _into_code_space(model, d, fallback):
    """Sums of codes d (N, D) back where codes live: VQ snapped to the nearest code per layer,
    Gaussian / gmm as they are, each vMF layer put back on its unit sphere (a layer whose sum nearly
    cancels has no direction and keeps fallback's)."""
    if _space(model) == "codebook":
        return _snap(model, d)
    if _space(model) != "sphere":
        return d
    return torch.cat(
        [
            torch.where(dl.norm(dim=-1, keepdim=True) > 1e-6, F.normalize(dl, dim=-1), fl)
            for dl, fl in zip(model.split_z(d), model.split_z(fallback))
        ],
        dim=-1,
    )


def parse_dims(spec, size):
    """Ranges over the full code -> (sorted LongTensor of dims, list of (start, stop)).

    spec: "0:32", "0:16,48:64", "-16:", ":8", "5", a slice, an int, or a list of those. Negative
    indices count from the end. Unlike Python slices nothing is clipped: a range that is empty or
    reaches outside [0, size) is an error, as is a step."""
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        if not spec.strip() or any(not p for p in parts):
            raise ValueError(f"malformed dims {spec!r}: expected ranges like 0:32 or 0:16,48:64")
    elif isinstance(spec, (int, slice)):
        parts = [spec]
    else:
        parts = list(spec)
        if not parts:
            raise ValueError("no dims given")
    ranges = []
    for p in parts:
        text = p if isinstance(p, str) else repr(p)
        if isinstance(p, str):
            try:
                bounds = [int(x) if x.strip() else None for x in p.split(":")]
            except ValueError:
                raise ValueError(f"malformed range {p!r}: expected start:stop with integers, e.g. 0:32") from None
            if len(bounds) == 1:
                if bounds[0] is None:
                    raise ValueError(f"malformed range {p!r}")
                bounds = [bounds[0], bounds[0] + 1 if bounds[0] != -1 else None]
            if len(bounds) != 2:
                raise ValueError(f"malformed range {p!r}: expected start:stop (no step), e.g. 0:32")
            start, stop = bounds
        elif isinstance(p, slice):
            if p.step not in (None, 1):
                raise ValueError(f"range {p} has a step; only contiguous ranges are allowed")
            start, stop = p.start, p.stop
        elif isinstance(p, int):
            start, stop = p, (p + 1 if p != -1 else None)
        else:
            raise ValueError(f"cannot read {p!r} as a range of dims")
        start = 0 if start is None else start
        stop = size if stop is None else stop
        for x in (start, stop):
            if not -size <= x <= size:
                raise ValueError(f"range {text} reaches outside the code, which has {size} dims (0..{size - 1})")
        start, stop = start + size if start < 0 else start, stop + size if stop < 0 else stop
        if start >= stop:
            raise ValueError(f"range {text} is empty (the code has {size} dims)")
        ranges.append((start, stop))
    dims = sorted({d for a, b in ranges for d in range(a, b)})
    return torch.tensor(dims, dtype=torch.long), ranges


def edit_size(model):
    """What --replace-dims ranges index: the latent_dim dims of z, or for VQ the n_latent code
    positions (one per latent layer; a code is replaced whole)."""
    c = model.config
    return c.num_latent_layers if model.family.edits_whole_layers else c.latent_dim


def edit_unit(model):
    """What --replace-dims counts, in words: "dims", or "code positions" (VQ)."""
    return "code positions" if model.family.edits_whole_layers else "dims"


def layer_span(model, j):
    """The --replace-dims range that covers latent layer j (0 = lowest)."""
    k = 1 if model.family.edits_whole_layers else model.config.z_dim
    return f"{j * k}:{(j + 1) * k}"


def edited_layers(model, dims):
    """The latent layers (0 = lowest) that a --replace-dims spec touches."""
    _, ranges = parse_dims(dims, edit_size(model))
    k = 1 if model.family.edits_whole_layers else model.config.z_dim
    return sorted({d // k for a, b in ranges for d in range(a, b)})


def fill_spheres(z, replaced, z_dim):
    """Put the vMF layers of codes z (n, D) that are only partly in `replaced` (LongTensor of dims
    just overwritten by a prior draw) back on their unit spheres, in place: the other dims of such a
    layer keep their exact values, and the replaced part keeps its direction and is rescaled to fill
    the remaining norm, |kept|^2 + |replaced|^2 = 1. Layers replaced whole, or not at all, are left
    as they are (a draw of a whole layer is put on its sphere by whoever drew it)."""
    D = z.shape[1]
    for j in range(D // z_dim):
        part = replaced[(replaced >= j * z_dim) & (replaced < (j + 1) * z_dim)]
        if 0 < part.numel() < z_dim:
            keep = torch.ones(D, dtype=torch.bool, device=z.device)
            keep[part] = False
            keep[: j * z_dim] = keep[(j + 1) * z_dim :] = False
            room = (1 - z[:, keep].pow(2).sum(-1, keepdim=True)).clamp_min(0).sqrt()
            z[:, part] = F.normalize(z[:, part], dim=-1) * room
    return z


def edit_z(model, z, dims, n, component=None, prior="auto"):
    """n copies of z (D,) with `dims` redrawn; untouched dims keep their exact values.

    With a fitted prior (model.uses_fitted_prior: prior "auto" or "fitted", no gmm `component`), the
    redrawn dims come from its conditional given the kept dims (univae.density); otherwise they are
    the same dims of fresh training-prior draws (gmm: from mixture `component` if given). A vMF
    layer that is only partly replaced has its replaced part rescaled so the layer stays on its
    sphere (fill_spheres; the fitted prior does the same); a wholly replaced one is a draw on the
    sphere. For VQ `dims` are code positions (edit_size): each one's code becomes a uniformly drawn
    code (VQ has no fitted prior)."""
    index, _ = parse_dims(dims, edit_size(model))
    if _space(model) == "codebook":  # code positions -> the z dims of those layers
        k = model.config.z_dim
        index = (index[:, None] * k + torch.arange(k)).flatten()
    index = index.to(z.device)
    if model.uses_fitted_prior(prior, component):
        keep = torch.ones(z.numel(), dtype=torch.bool, device=z.device)
        keep[index] = False
        return model.fitted_prior.conditional_sample(z, keep, n)
    out = z.reshape(1, -1).expand(n, -1).clone()
    out[:, index] = model.sample_prior(n, z.device, component=component, prior=prior)[:, index].to(out.dtype)
    if _space(model) == "sphere":
        fill_spheres(out, index, model.config.z_dim)
    return out


def layer_spreads(model, spread):
    """spread as one float per latent layer: a number is every layer's, a sequence is one per layer
    (lowest first); each non-negative. Raises ValueError naming the value otherwise."""
    k = model.config.num_latent_layers
    spreads = [float(spread)] * k if isinstance(spread, (int, float)) else [float(x) for x in spread]
    if len(spreads) != k:
        raise ValueError(
            f"spread has {len(spreads)} values, but the model has {k} latent layers: "
            "give one number for all, or one per layer, lowest first"
        )
    if any(not x >= 0 for x in spreads):  # `not >=` also catches nan
        raise ValueError(f"spread must be non-negative, got {spread}")
    return spreads


def perturb_z(model, z, n, spread, params=None):
    """n codes around each row of z (B, D) -> (B*n, D), rows grouped per input, drawn like posterior samples.

    `spread` is one number or one per latent layer (lowest first; layer_spreads), so that a variant
    can redraw the layers that carry how a sentence is said and keep the one that carries what it
    says. vMF: per layer, a sample s ~ vMF(z_l, kappa) of the model's own posterior, then
    slerp(z_l, s, spread): spread 1 is the posterior itself, 0 is z, 2 doubles each sample's angle.
    VQ, whose posterior is a point mass: per layer, a code drawn with probability
    ∝ exp(-d(z_l, e_k) / spread), d the family's squared distance (spread 0: z's own code).
    Otherwise (e.g. Gaussian, mixture), z_l + spread * (sample(params) - mean(params)) with the
    posterior params of z."""
    spreads = layer_spreads(model, spread)
    z = z.repeat_interleave(n, dim=0)
    if _space(model) == "sphere":

        def around(zl, j):
            if spreads[j] == 0:
                return zl
            return slerp(zl, model.family.sample(zl, layer=j), torch.tensor([spreads[j]], device=z.device))[0]

        return _per_layer(model, z, around)
    if _space(model) == "codebook":
        return _per_layer(model, z, lambda zl, j: _draw_codes(model.family, zl, j, spreads[j]).to(z.dtype))
    if params is None:
        raise ValueError("perturbing a non-vMF code needs its posterior params")
    params = [p.repeat_interleave(n, dim=0) for p in params]
    noise = torch.cat(
        [spreads[j] * (model.family.sample(p, layer=j) - model.family.mean(p, layer=j)) for j, p in enumerate(params)],
        dim=-1,
    )
    return z + noise


def attribute_direction(model, z_from, z_to, method="probe", shrinkage=0.1):
    """The direction (D,) that moves a code from the FROM sentences' codes z_from (n, D) towards the
    TO sentences' z_to (m, D); transfer_z adds strength x it.

    "mean": the difference of the means, m_to - m_from (each layer's slice of it is that layer's
    mean difference). "probe" (default): the unit normal w of a linear probe separating the two
    sets, Fisher's discriminant w ∝ S^-1 (m_to - m_from) with S the pooled within-set covariance
    shrunk towards its mean variance (S <- (1 - shrinkage) S + shrinkage tr(S)/D I, so a few hundred
    codes in 192 dims give a stable solve), scaled to the mean difference's component along it:
    w (w . (m_to - m_from)). Both move a FROM code by the gap between the two sets' means at
    strength 1; the probe spends none of the move on directions in which the sets do not differ.
    Measured on the default checkpoint (bench/transfer.py; docs/results.md, "What the latent space is for"),
    the probe turned more sentences at the same content kept. FROM == TO gives zero."""
    z_from, z_to = z_from.double(), z_to.double()
    if z_from.shape[0] < 1 or z_to.shape[0] < 1:
        raise ValueError("attribute_direction needs at least one FROM code and one TO code")
    diff = z_to.mean(0) - z_from.mean(0)
    if method == "mean" or not bool(diff.any()):
        return diff.float()
    if method != "probe":
        raise ValueError(f"method must be probe or mean, got {method!r}")
    if not 0 < shrinkage <= 1:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
    centred = torch.cat([z_from - z_from.mean(0), z_to - z_to.mean(0)])  # (n + m, D)
    S = centred.T @ centred / max(centred.shape[0] - 2, 1)
    scale = float(S.diagonal().mean())
    S = (1 - shrinkage) * S + shrinkage * (scale if scale > 0 else 1.0) * torch.eye(S.shape[0], dtype=S.dtype)
    w = torch.linalg.solve(S.to(diff.device), diff)
    w = w / w.norm()
    return (w * (w @ diff)).float()


def transfer_z(model, z, direction, strength):
    """Codes z (N, D) moved by strength x direction (D,): each vMF layer's sum put back on its unit
    sphere (a layer whose sum nearly cancels keeps its code), Gaussian / gmm codes used as they are,
    VQ snapped to the nearest code per layer. Strength 0 returns z itself, unrounded."""
    if strength == 0:
        return z.clone()
    return _into_code_space(model, z + strength * direction.to(z), z)


def _draw_codes(family, z, layer, spread):
    """VQ: per row of z (B, z_dim), a code vector drawn from softmax(-d(z, e_k) / spread)."""
    d = family.distances(family.project(z), layer)  # (B, K)
    if spread == 0:
        codes = d.argmin(-1)
    else:
        codes = torch.multinomial(torch.softmax(-d / spread, dim=-1), 1)[:, 0]
    return family.vectors(layer)[codes]


def _check_texts(texts):
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for s in texts:
        if not isinstance(s, str):
            raise ValueError(f"expected a sentence (str), got {type(s).__name__}")
        if not s.strip():
            raise ValueError("empty text: every input needs at least one character")
    return texts


def posterior(model, texts):
    """Sentences -> (posterior mean codes (N, D), per-layer posterior params). Over-long ones are
    truncated with a warning (encode_texts)."""
    texts = _check_texts(texts)
    ids, _, _ = encode_texts(model.tokenizer, texts, model.config.maxlen)
    params = model.posterior_params(ids.to(model.device))
    return model.mean_code(params), params


# ----------------------------------------------------------------------------- the API (UniVAE's methods call these)


def generate(model, z, **decoding):
    """Codes (N, D) -> N sentences."""
    opts = Decoding(**decoding)
    with _inference(model, opts.seed):
        return _texts(model, z, opts)


def reconstruct(model, texts, return_z=False, **decoding):
    """Sentences -> their decoded posterior means, aligned with the input."""
    opts = Decoding(**decoding)
    with _inference(model, opts.seed):
        z, _ = posterior(model, texts)
        out = _texts(model, z, opts)
    return (out, z) if return_z else out


def sample(model, n, return_z=False, component=None, prior="auto", spread=None, **decoding):
    """n sentences decoded from prior draws (model.sample_prior: `prior` auto, fitted or uniform;
    `spread` of fitted draws; gmm: from mixture `component` if given)."""
    opts = Decoding(**decoding)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    with _inference(model, opts.seed):
        z = model.sample_prior(n, component=component, prior=prior, spread=spread)
        out = _texts(model, z, opts)
    return (out, z) if return_z else out


def edit(model, texts, dims, n, return_z=False, component=None, prior="auto", **decoding):
    """n variants of each sentence (one str, or a list) with the latent `dims` (see parse_dims; VQ:
    code positions) redrawn (edit_z: from the fitted prior's conditional given the kept dims, or the
    training prior with prior="uniform"; gmm: from mixture `component` if given). Returns
    len(texts) * n sentences, the n variants of each sentence together."""
    opts = Decoding(**decoding)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    with _inference(model, opts.seed):
        z, _ = posterior(model, texts)
        z = torch.cat([edit_z(model, zi, dims, n, component=component, prior=prior) for zi in z])
        out = _texts(model, z, opts)
    return (out, z) if return_z else out


def interpolate(model, a, b, steps, return_z=False, **decoding):
    """`steps` sentences on the path from a's code to b's, both ends included."""
    opts = Decoding(**decoding)
    with _inference(model, opts.seed):
        z, _ = posterior(model, [a, b])
        z = interpolate_z(model, z[0], z[1], steps)
        out = _texts(model, z, opts)
    return (out, z) if return_z else out


def analogy(model, a, b, c, n=1, spread=1.0, return_z=False, **decoding):
    """ "a is to b as c is to ?": decode z_c + z_b - z_a; with n > 1, also n - 1 codes drawn
    around it as perturb_z does (noise scaled by spread; for non-vMF latents, c's posterior noise)."""
    opts = Decoding(**decoding)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    with _inference(model, opts.seed):
        z, params = posterior(model, [a, b, c])
        d = analogy_z(model, z[0], z[1], z[2])[None]
        if n > 1:
            around = perturb_z(model, d, n - 1, spread, [p[2:3] for p in params])
            d = torch.cat([d, around])
        out = _texts(model, d, opts)
    return (out, d) if return_z else out


DEFAULT_KEEP_START = 0.8  # measured: docs/results.md, "What the latent space is for"


def augment(model, texts, n, spread=1.0, candidates=1, rank=None, keep_start=None, **decoding):
    """For each sentence, up to n distinct variants decoded from codes drawn around its posterior
    mean (perturb_z; `spread` one number or one per latent layer, e.g. [0, 1, 1] keeps the lowest
    layer, which the default recipe trains to hold the content). Each variant keeps the sentence's
    first k tokens, k drawn uniformly from 1 to keep_start x its length (default DEFAULT_KEEP_START;
    0 = every token decoded from the code; beam search cannot force a prefix, so there the default
    is 0): the decoder's drift, which grows along
    the sentence, then changes the end and leaves the start, and the variants keep the label more
    often (snownlp's judge on 300 labelled reviews agrees with the source's label for 0.69 of the
    variants at 0.8, 0.63 at 0, 0.82 for the sources themselves). Outputs equal to the input (or to
    its tokenised round trip) or to an earlier variant, whitespace ignored, are dropped, and so are
    empty ones. With candidates=m > 1, m * n codes are drawn and decoded, and the n surviving
    variants that `rank` puts first are kept: "round_trip" = the cosine between the variant's own
    code (encoded again) and the sentence's, "overlap" = char F1 with the sentence (neither helped
    measurably on the default checkpoint, so candidates defaults to 1). Returns a list of lists
    aligned with `texts`."""
    from univae.metrics import char_f1

    opts = Decoding(**decoding)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    layer_spreads(model, spread)  # fail before any decoding
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    if keep_start is None:
        keep_start = 0.0 if opts.beam_size > 1 else DEFAULT_KEEP_START
    if not 0 <= keep_start <= 1:
        raise ValueError(f"keep_start must be in [0, 1], got {keep_start}")
    if rank not in (None, "round_trip", "overlap"):
        raise ValueError(f"rank must be round_trip, overlap or None, got {rank!r}")
    texts = _check_texts(texts)
    m = n * candidates
    with _inference(model, opts.seed):
        z, params = posterior(model, texts)
        ids, _, _ = encode_texts(model.tokenizer, texts, model.config.maxlen, warn=False)
        forced = (
            None
            if keep_start == 0
            else _kept_starts(ids, m, keep_start, model.tokenizer.token_to_id(SEP), model.config.pad_token_id)
        )
        out = _texts(model, perturb_z(model, z, m, spread, params), opts, forced)
    pools = []
    for i, s in enumerate(texts):
        key = lambda t: "".join(t.split())  # copies that differ by whitespace alone are copies
        seen = {key(s), key(detokenize(model.tokenizer, ids[i].tolist()))}
        variants = []
        for v in out[i * m : (i + 1) * m]:
            if key(v) and key(v) not in seen:
                seen.add(key(v))
                variants.append(v)
        pools.append(variants)
    if candidates == 1 or rank is None:
        return [p[:n] for p in pools]
    if rank == "overlap":
        scores = [[char_f1(v, s) for v in p] for s, p in zip(texts, pools)]
    else:
        flat = [v for p in pools for v in p]
        zv = model.encode(flat).to(z) if flat else z[:0]
        cos = _per_layer_cosine(
            model, zv, z.repeat_interleave(torch.tensor([len(p) for p in pools], device=z.device), 0)
        )
        it = iter(cos.tolist())
        scores = [[next(it) for _ in p] for p in pools]
    result = []
    for p, sc in zip(pools, scores):
        best = sorted(range(len(p)), key=lambda k: -sc[k])[:n]
        result.append([p[k] for k in sorted(best)])
    return result


def _kept_starts(ids, m, fraction, sep, pad):
    """Forced target tokens for m variants of each sentence of ids (B, maxlen) -> (B*m, maxlen - 1),
    -1 = free: each variant keeps the sentence's first k tokens, k uniform in 1..round(fraction x length)."""
    B, T = ids.shape
    body = ids[:, 1:]  # after [CLS]: the target tokens, [SEP] then padding
    lengths = (body != pad).sum(1) - (body == sep).sum(1)  # tokens before [SEP]
    top = (lengths.double() * fraction).round().long().clamp_min(1).repeat_interleave(m)
    k = (torch.rand(B * m) * top).long() + 1
    forced = body.repeat_interleave(m, dim=0).clone()
    forced[torch.arange(T - 1)[None] >= k[:, None]] = -1
    return forced


def _per_layer_cosine(model, a, b):
    """Mean over latent layers of the cosine between rows of a and b (N, D) -> (N,)."""
    return torch.stack([F.cosine_similarity(x, y, dim=-1) for x, y in zip(model.split_z(a), model.split_z(b))]).mean(0)


DEFAULT_STRENGTH = 5.0  # bench/transfer.py: docs/results.md, "What the latent space is for"


def transfer(model, texts, from_texts, to_texts, strength=DEFAULT_STRENGTH, method="probe", return_z=False, **decoding):
    """Each sentence of `texts` moved from the attribute of `from_texts` to that of `to_texts` (e.g.
    negative -> positive reviews): its posterior mean code plus strength x attribute_direction(FROM
    codes, TO codes), decoded. Strength 0 decodes the plain reconstruction; 1 moves a code by the gap
    between the two sets' means. Returns one sentence per input, in order."""
    opts = Decoding(**decoding)
    texts, from_texts, to_texts = _check_texts(texts), _check_texts(from_texts), _check_texts(to_texts)
    if not (from_texts and to_texts):
        raise ValueError("transfer needs at least one FROM sentence and one TO sentence")
    with _inference(model, opts.seed):
        z, _ = posterior(model, texts)
        direction = attribute_direction(model, model.encode(from_texts), model.encode(to_texts), method=method)
        z = transfer_z(model, z, direction, strength)
        out = _texts(model, z, opts)
    return (out, z) if return_z else out
