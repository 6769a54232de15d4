"""UniVAE on top of the backbone (univae/transformer.py).

UniVAE's forward, in one screen (docs/design.md):

    h = embed(input_ids, token_type_ids, positions)           # (B, S, d), S = 2*maxlen
    for l, layer in enumerate(layers):
        if l carries a latent: h[:, 0] = up_l(z_l), z_l ~ q(z | down_l(h[:, 0]))
        h = layer(h, masks[l], rope)                            # independent below, uniae above
    logits = head(h[:, maxlen:])                                # target half only

Decoding from z needs no source: a sequence [slot; target] with a one-token "source" whose
hidden state is overwritten with up_l(z_l) at every latent layer, under the same masks with
src_len = 1 (`decode_logits`, and the cached decoder in generate.py).
"""

import os
from dataclasses import dataclass

import torch
import torch.nn as nn

import masks
from univae import generate
from univae.attention import SplitLayout, resolve
from univae.checkpoint import (
    CheckpointError,
    check_trained,
    convert_hf_state_dict,
    read_checkpoint,
    save_univae,
)
from univae.config import UniVAEConfig
from univae.density import PRIOR_FILE, SAMPLE_SPREAD, load_prior
from univae.latents import make_family
from univae.objective import target_ce, vae_loss
from univae.tokenizer import encode_texts
from univae.transformer import Transformer, build_mask

# ----------------------------------------------------------------------------- UniVAE


@dataclass
class UniVAEOutput:
    # the plain objective: CE for fixed-kappa vMF (its KL is a constant); otherwise the negative
    # ELBO per target token, ce + kl / (n_tokens / B). train.py minimises univae.objective.VAEObjective.
    loss: torch.Tensor
    ce: torch.Tensor  # mean target cross-entropy per real token (incl. the closing [SEP])
    kl: torch.Tensor  # mean KL(q(z|x) || p(z)) per sentence, summed over latent layers
    kl_per_layer: torch.Tensor  # (n_latent,) mean over the batch
    logits: torch.Tensor  # (B, m, V), m = maxlen unless trimmed: logits[:, t] predicts target token t+1
    z: torch.Tensor  # (B, n_latent * z_dim) the code the decoder saw
    mu: torch.Tensor  # (B, n_latent * z_dim) posterior mean code
    n_tokens: torch.Tensor  # number of target tokens the CE averages over
    labels: torch.Tensor = None  # (B, m-1) the tokens logits[:, :-1] predict, -100 on padding (never word-dropped)
    kl_per_dim: torch.Tensor = None  # (n_latent, z_dim) batch mean of each dim's KL; None for vMF, VQ or a forced z
    # family terms (family.batch_terms), batch means summed over latent layers; None for other families or a forced z
    commitment: torch.Tensor = None  # vq: |h - sg(e_c)|^2 / z_dim; loss includes vq_beta * commitment
    kl_c: torch.Tensor = None  # gmm: KL(q(c|x) || p(c)), the part of kl that kl_per_dim (the z part) leaves out
    dispersion: torch.Tensor = (
        None  # gmm: (n_latent, z_dim) DEM-VAE's dispersion, inside kl_per_dim (latents.GaussianMixture)
    )
    mi_c: torch.Tensor = None  # gmm: I(x; c) within the batch, inside kl_c


class UniVAE(nn.Module):
    def __init__(self, config: UniVAEConfig, tokenizer=None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.transformer = Transformer(config)
        n, d = config.num_latent_layers, config.hidden_size
        self.family = make_family(config)
        self.down = nn.ModuleList(nn.Linear(d, self.family.param_dim) for _ in range(n))
        self.up = nn.ModuleList(nn.Linear(config.z_dim, d) for _ in range(n))
        for m in [*self.down, *self.up]:
            self.transformer._init_weights(m)
        # up(z) replaces a LayerNorm'ed hidden state, whose elements have unit variance. BERT's 0.02
        # init would make the latent a near-zero [CLS] key/value that the target can barely attend to
        # and the encoder barely gets gradient through; start it at the scale of the states it replaces.
        code_sq_norm = 1.0 if self.family.space == "sphere" else config.z_dim  # E|z|^2 under the prior
        for m in self.up:
            nn.init.normal_(m.weight, std=code_sq_norm**-0.5)
        # layer index -> index of its latent (only latent layers appear)
        self.latent_index = {l: j for j, l in enumerate(config.latent_layers)}
        # A density fitted to the training set's posterior codes (univae.density), saved beside the
        # weights; sampling and edits draw from it when present (docs/design.md, "Sampling and editing").
        self.fitted_prior = None

    # ------------------------------------------------------------------ helpers

    @property
    def device(self):
        return self.transformer.embed.word.weight.device

    def backend(self, device):
        return resolve(self.config.attn, device, self.config.head_dim)

    def layer_masks(self, src_len, q_len, src_lengths, batch, device, prune=False):
        """One mask per kind, built once, expanded to a per-layer list.

        prune (split only; for a caller that reads nothing of the source but the latent layers'
        [CLS] inputs, like the training forward): skip the source rows nobody reads. The top layer
        is a latent layer whose target sees only key 0, which the bottleneck overwrites: it needs no
        source query at all. The layer below it feeds the source only to that layer's [CLS] input:
        it needs the source [CLS] query alone. Every lower layer's source rows are keys of the next."""
        backend = self.backend(device)
        if backend == "split":
            L, shared = self.config.num_hidden_layers, {}  # one set of small masks for every layer
            per_layer = [SplitLayout(src_len, src_lengths, l in self.latent_index, masks=shared) for l in range(L)]
            if prune:
                per_layer[L - 2].src_queries = 1
                per_layer[L - 1] = SplitLayout(1, None, True, src_queries=0, masks=shared)  # input rows: [CLS], target
            return per_layer, backend
        if src_lengths is None:
            batch = 1 if backend != "flex" else None
        lower = build_mask(masks.independent(src_len, src_lengths), batch, q_len, q_len, backend, device)
        upper = build_mask(masks.uniae(src_len, src_lengths), batch, q_len, q_len, backend, device)
        per_layer = [upper if l in self.latent_index else lower for l in range(self.config.num_hidden_layers)]
        return per_layer, backend

    def split_z(self, z):
        """(B, n*z_dim) -> list of n (B, z_dim), lowest latent layer first."""
        return list(z.split(self.config.z_dim, dim=-1))

    def _run(self, h, layer_masks, backend, rope, z=None, sample=False, dropped=None):
        """The layer stack with the bottleneck on position 0. z forces the code; else encode it.
        dropped (B,) long, optional: the latent layer whose code each sentence gets as a training-prior
        draw instead (-1: none; code dropout). The [CLS] state is shared, so the layers above read the
        draw too; z_list and params_list keep the encoder's own codes. Fewer masks than layers stop
        at the input of the first layer not run, after its bottleneck has read its params.

        Returns (h, z_list, params_list) where params are None when z was forced."""
        zs = self.split_z(z) if z is not None else []
        params = []

        def bottleneck(l, h):
            j = self.latent_index.get(l)
            if j is None:
                return h
            if z is None:
                p = self.down[j](h[:, 0])
                params.append(p)
                zs.append(self.family.sample(p, layer=j) if sample else self.family.mean(p, layer=j))
            zj = zs[j]
            if dropped is not None:
                draw = self.family.prior(len(zj), zj.device, layer=j).to(zj.dtype)
                zj = torch.where((dropped == j)[:, None], draw, zj)
            return torch.cat([self.up[j](zj.to(h.dtype))[:, None], h[:, 1:]], dim=1)

        h = self.transformer.run_layers(h, layer_masks, backend, rope, at_input=bottleneck)
        return h, zs, params

    # ------------------------------------------------------------------ training forward

    def forward(self, input_ids, token_type_ids=None, z=None, sample=None, word_dropout=0.0, code_dropout=0.0):
        """input_ids (B, 2*maxlen) from univae.data.join. z (B, n*z_dim) forces the bottleneck;
        otherwise z is a posterior sample in training mode and the posterior mean in eval mode.

        word_dropout (training mode only, like nn.Dropout): each real target input token after the
        target [CLS] becomes [MASK] with this probability (Bowman et al. 2016), so the decoder must
        lean on z; the labels stay the original tokens. Rate 0 draws no random numbers.

        code_dropout (training mode only): with this probability a sentence's decoder gets one latent
        layer's code (chosen uniformly) as a draw from the training prior, so no layer's code can be
        the only carrier of the sentence. The source sees the same [CLS] state, so the layers above
        a dropped one encode from the draw too; the returned z/mu and the KL are the encoder's codes
        (never the draws). Rate 0 draws no random numbers.

        Both halves may be trimmed to a common length m < maxlen when a batch holds only shorter
        sentences (train.py does): positions stay 0..m-1 and maxlen..maxlen+m-1, so the target sits
        exactly where decoding puts it, and the removed columns were padding that no real token could
        see (source padding keys are masked; target padding follows every real target token)."""
        c = self.config
        B, S = input_ids.shape
        m = S // 2
        if S % 2 or not 2 < m <= c.maxlen:
            raise ValueError(
                f"input_ids has length {S}, expected 2*maxlen = {2 * c.maxlen} (or two equal trimmed halves)"
            )
        if token_type_ids is None:
            token_type_ids = (torch.arange(S, device=input_ids.device) >= m).long().expand(B, S)
        sample = self.training if sample is None else sample
        tgt = input_ids[:, m:]
        labels = tgt[:, 1:].masked_fill(tgt[:, 1:] == c.pad_token_id, -100)  # padding never counts
        if word_dropout > 0 and self.training:
            input_ids = torch.cat([input_ids[:, :m], self._drop_words(tgt, word_dropout)], dim=1)
        src_lengths = (input_ids[:, :m] != c.pad_token_id).sum(1)
        layer_masks, backend = self.layer_masks(m, S, src_lengths, B, input_ids.device, prune=True)
        positions = torch.arange(S, device=input_ids.device)
        positions = torch.where(positions < m, positions, positions - m + c.maxlen)
        h = self.transformer.embed(input_ids, token_type_ids, positions)
        dropped = None
        if code_dropout and self.training and z is None:
            pick = torch.randint(c.num_latent_layers, (B,), device=input_ids.device)
            dropped = torch.where(torch.rand(B, device=input_ids.device) < code_dropout, pick, -1)
        h, zs, params = self._run(
            h, layer_masks, backend, self.transformer.rope(positions), z=z, sample=sample, dropped=dropped
        )
        logits = self.transformer.logits(h[:, -m:])  # (B, m, V), target half only (the last m rows)
        ce, n_tokens = target_ce(logits, labels)
        return self._output(logits, labels, ce, n_tokens, zs, params)

    def _drop_words(self, tgt, rate):
        """Word dropout on the target half: each real token after [CLS] becomes [MASK] with probability rate."""
        drop = torch.rand(tgt.shape, device=tgt.device) < rate
        drop[:, 0] = False  # the target [CLS] is where decoding starts: never dropped
        drop &= tgt != self.config.pad_token_id
        return tgt.masked_fill(drop, self.mask_token_id())

    def _output(self, logits, labels, ce, n_tokens, zs, params):
        """The forward's terms: KL per layer and per dim, the posterior mean, the family's own terms, the loss."""
        c, B = self.config, logits.shape[0]
        kl_per_dim, terms = None, {}
        if params:
            kl_per_layer = torch.stack(
                [self.family.kl(p, layer=j).float() for j, p in enumerate(params)], dim=-1
            )  # (B, n)
            # VQ's posterior is its code: z itself (mean() would read a codebook sample() just updated)
            mu = torch.cat(zs, dim=-1) if self.family.space == "codebook" else self.mean_code(params)
            if not self.family.kl_is_constant:
                kl_per_dim = torch.stack(
                    [self.family.kl_per_dim(p, layer=j).mean(0) for j, p in enumerate(params)]
                )  # (n, z_dim)
            terms = self.family.batch_terms(params, zs)
        else:
            kl_per_layer = logits.new_zeros(B, c.num_latent_layers, dtype=torch.float32)
            mu = torch.cat(zs, dim=-1)
        kl = kl_per_layer.sum(-1).mean()
        # -ELBO per target token, (sum of token CEs + sum of sentence KLs) / n_tokens; vMF with fixed
        # kappa and VQ: the KL is a constant, reported but not optimised
        penalty = None if self.family.kl_is_constant else kl
        return UniVAEOutput(
            loss=vae_loss(ce, terms.get("commitment"), c.vq_beta, penalty, n_tokens / B),
            ce=ce,
            kl=kl,
            kl_per_layer=kl_per_layer.mean(0),
            logits=logits,
            z=torch.cat(zs, dim=-1),
            mu=mu,
            n_tokens=n_tokens,
            labels=labels,
            kl_per_dim=kl_per_dim,
            **terms,
        )

    def mask_token_id(self):
        """The [MASK] id word dropout writes; a vocab without [MASK] cannot use word dropout."""
        mask_id = self.tokenizer.token_to_id("[MASK]") if self.tokenizer is not None else None
        if mask_id is None:
            raise ValueError(
                "word dropout replaces target tokens by [MASK], but this model's vocab has no [MASK] token"
            )
        return mask_id

    # ------------------------------------------------------------------ encoder / decoder views

    def posterior_params(self, src_ids):
        """src_ids (B, maxlen) -> list of per-layer posterior params, from the source half alone.

        The source never sees the target, so running it alone gives exactly its hidden states in
        the joined forward; it only needs to reach the top latent layer's input."""
        c = self.config
        B, S = src_ids.shape
        src_lengths = (src_ids != c.pad_token_id).sum(1)
        backend = self.backend(src_ids.device)
        top = c.latent_layers[-1]
        if backend == "split":  # below the top latent layer, whose input only [CLS] is read: its query alone
            shared = {}
            mask = [
                SplitLayout(S, src_lengths, False, src_queries=1 if l == top - 1 else None, masks=shared)
                for l in range(top)
            ]
        else:
            mask = [build_mask(masks.independent(S, src_lengths), B, S, S, backend, src_ids.device)] * top
        positions = torch.arange(S, device=src_ids.device)
        h = self.transformer.embed(src_ids, torch.zeros_like(src_ids), positions)
        _, _, params = self._run(h, mask, backend, self.transformer.rope(positions))
        return params

    def mean_code(self, params_list):
        """Per-layer posterior params -> the posterior mean code (B, n_latent*z_dim)."""
        return torch.cat([self.family.mean(p, layer=j) for j, p in enumerate(params_list)], dim=-1)

    def encode_ids(self, src_ids):
        return self.mean_code(self.posterior_params(src_ids))

    def posterior_chunks(self, ids, batch_size=256):
        """Source ids (N, maxlen) on any device -> yields (chunk on the model's device, its per-layer
        posterior params), batch_size rows at a time: the one loop that encodes many sentences."""
        for chunk in ids.split(batch_size):
            chunk = chunk.to(self.device)
            yield chunk, self.posterior_params(chunk)

    def posterior_params_all(self, ids, batch_size=256):
        """Source ids (N, maxlen) -> per-layer posterior params (N, param_dim), encoded in chunks."""
        chunks = [params for _, params in self.posterior_chunks(ids, batch_size)]
        return [torch.cat(layer) for layer in zip(*chunks)]

    @torch.no_grad()
    def encode(self, texts, batch_size=256):
        """Sentences -> posterior mean codes (N, n_latent*z_dim); deterministic."""
        ids, _, _ = encode_texts(self.tokenizer, texts, self.config.maxlen)
        return self.mean_code(self.posterior_params_all(ids, batch_size)).float()

    def decoder_inputs(self, tgt_ids):
        """[slot; target] ids, token types and positions for decoding without a source.

        Slot 0 stands for the source [CLS]: position 0, segment 0; target t sits at position
        maxlen + t, segment 1, exactly where it sits in training."""
        B, T = tgt_ids.shape
        slot = torch.full((B, 1), self.tokenizer.token_to_id("[CLS]") if self.tokenizer else 0, device=tgt_ids.device)
        ids = torch.cat([slot, tgt_ids], dim=1)
        token_types = torch.ones_like(ids)
        token_types[:, 0] = 0
        positions = torch.cat(
            [
                torch.zeros(1, device=ids.device, dtype=torch.long),
                self.config.maxlen + torch.arange(T, device=ids.device),
            ]
        )
        return ids, token_types, positions

    def decode_logits(self, z, tgt_ids):
        """Teacher-forced target logits (B, T, V) given z; tgt_ids (B, T) starts with [CLS], T <= maxlen."""
        B, T = tgt_ids.shape
        if T > self.config.maxlen:
            raise ValueError(f"target length {T} exceeds maxlen {self.config.maxlen}")
        ids, token_types, positions = self.decoder_inputs(tgt_ids)
        layer_masks, backend = self.layer_masks(1, T + 1, None, B, ids.device)
        h = self.transformer.embed(ids, token_types, positions)
        h, _, _ = self._run(h, layer_masks, backend, self.transformer.rope(positions), z=z)
        return self.transformer.logits(h[:, 1:])

    def sample_prior(self, n, device=None, component=None, prior="auto", spread=None):
        """n codes from the prior, (n, n_latent*z_dim). prior: "fitted" (the density fitted to the
        training codes, univae.density; vMF draws put back on each layer's sphere), "uniform" (the training prior: uniform on each vMF sphere,
        N(0, I), uniform codes, the gmm's own mixture) or "auto" (fitted when the model has one).
        component (gmm only, training prior): the mixture component every layer draws from, or one
        per latent layer (a list); default: drawn from p(c). spread (fitted draws only): each mixture
        component's standard deviation times this; default univae.density.SAMPLE_SPREAD (1 = the
        fitted density itself)."""
        device = device or self.device
        n_latent = self.config.num_latent_layers
        if self.uses_fitted_prior(prior, component):
            return self.fitted_prior.sample(n, spread=SAMPLE_SPREAD if spread is None else spread).to(device)
        if component is None:
            return torch.cat([self.family.prior(n, device, layer=j) for j in range(n_latent)], dim=-1)
        if not self.family.has_components:
            raise ValueError(f"a mixture component needs --latent gmm; this model's latent is {self.config.latent}")
        per_layer = [component] * n_latent if isinstance(component, int) else list(component)
        if len(per_layer) != n_latent:
            raise ValueError(f"give one component, or one per latent layer ({n_latent}), got {len(per_layer)}")
        return torch.cat(
            [self.family.prior(n, device, layer=j, component=cj) for j, cj in enumerate(per_layer)], dim=-1
        )

    def uses_fitted_prior(self, prior="auto", component=None):
        """Whether draws for `prior` come from the fitted density (univae.density): always for "fitted"
        (an error without one), for "auto" when the model has one, never for "uniform". A gmm
        `component` names a component of the training prior's own mixture, so it draws from that."""
        if prior not in ("auto", "fitted", "uniform"):
            raise ValueError(f"prior must be auto, fitted or uniform, got {prior!r}")
        if prior == "fitted" and self.fitted_prior is None:
            raise ValueError("this checkpoint has no fitted prior (python -m univae.prior --checkpoint DIR fits one)")
        if prior == "fitted" and component is not None:
            raise ValueError("a mixture component is one of the training prior's: it does not go with prior='fitted'")
        return prior != "uniform" and self.fitted_prior is not None and component is None

    # ------------------------------------------------------------------ discrete views (vq codes, gmm components)

    def _need(self, ability, latent):
        if not getattr(self.family, ability):
            raise ValueError(f"this needs --latent {latent}; the model's latent family is {self.config.latent}")

    @torch.no_grad()
    def encode_codes(self, texts, batch_size=256):
        """vq: sentences -> their code indices, LongTensor (N, n_latent), lowest latent layer first."""
        self._need("has_codes", "vq")
        return self.z_to_codes(self.encode(texts, batch_size))

    def z_to_codes(self, z):
        """vq: codes (N, n_latent*z_dim) -> the index of the nearest code per layer, (N, n_latent)."""
        self._need("has_codes", "vq")
        z = z.to(self.device)
        return torch.stack([self.family.codes(zl, layer=j) for j, zl in enumerate(self.split_z(z))], dim=-1).cpu()

    def codes_to_z(self, codes):
        """vq: code indices (N, n_latent) -> z (N, n_latent*z_dim), the code vectors the decoder reads."""
        self._need("has_codes", "vq")
        codes = torch.as_tensor(codes, dtype=torch.long)
        n, K = self.config.num_latent_layers, self.config.codebook_size
        if codes.dim() != 2 or codes.shape[1] != n:
            raise ValueError(f"codes must have shape (N, {n}): one code per latent layer, got {tuple(codes.shape)}")
        if codes.numel() and not (0 <= int(codes.min()) and int(codes.max()) < K):
            raise ValueError(f"codes must be in [0, {K - 1}] (codebook size {K})")
        codes = codes.to(self.device)
        return torch.cat([self.family.vectors(j)[codes[:, j]] for j in range(n)], dim=-1)

    def decode_codes(self, codes, **decoding):
        """vq: code indices (N, n_latent) -> N sentences (decoding options as generate)."""
        return self.generate(self.codes_to_z(codes), **decoding)

    @torch.no_grad()
    def encode_components(self, texts):
        """gmm: sentences -> argmax_c q(c|x) per latent layer, LongTensor (N, n_latent)."""
        self._need("has_components", "gmm")
        ids, _, _ = encode_texts(self.tokenizer, texts, self.config.maxlen)
        params = self.posterior_params_all(ids)
        return torch.stack([self.family.component_log_probs(p).argmax(-1) for p in params], dim=-1).cpu()

    # ------------------------------------------------------------------ checkpoints

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """A univae checkpoint directory (everything, the fitted prior included), or a HF BERT/RoFormer
        directory or bundled backbone name ("bundled": fresh latent heads on its weights)."""
        ckpt = read_checkpoint(path, **overrides)
        model = cls(ckpt.config, ckpt.tokenizer)
        if not ckpt.is_univae:
            sd, has_head = convert_hf_state_dict(ckpt.state_dict, model.transformer)
            model.transformer.load_state_dict(sd, strict=has_head)
            return model
        try:
            model.load_state_dict(ckpt.state_dict)
        except RuntimeError as e:
            raise ValueError(
                f"{ckpt.path}: weights do not match config.json: {str(e).splitlines()[1].strip()}"
            ) from None
        prior_path = os.path.join(ckpt.path, PRIOR_FILE)
        if os.path.exists(prior_path):  # the density sampling draws from
            model.fitted_prior = load_prior(prior_path, model)
        return model

    def save_pretrained(self, directory):
        save_univae(self.config, self.state_dict(), self.tokenizer, directory)
        prior_path = os.path.join(directory, PRIOR_FILE)
        if self.fitted_prior is not None:
            self.fitted_prior.save(prior_path)  # atomic like the rest
        elif os.path.exists(prior_path):  # a prior fitted to other weights must not be loaded with these
            os.remove(prior_path)

    # --- generation API (univae/generate.py) ------------------------------------------
    # Thin wrappers. **decoding are univae.generate.Decoding's fields (beam_size, length_penalty,
    # do_sample, temperature, top_k, top_p, no_repeat_ngram, seed, batch_size, compile_step); greedy by default.
    # Each returns a list of str (at most maxlen - 1 tokens each); return_z=True also returns the codes.

    def generate(self, z, use_cache=True, **decoding):
        """Codes (N, latent_dim) -> N sentences. use_cache=False re-runs the whole joined sequence per step."""
        return generate.generate(self, z, use_cache=use_cache, **decoding)

    def reconstruct(self, texts, **decoding):
        """Sentences -> their decoded posterior means."""
        return generate.reconstruct(self, texts, **decoding)

    def sample(self, n, **decoding):
        """n sentences from prior draws: prior="auto" (the fitted prior when the model has one),
        "fitted" or "uniform" (sample_prior); spread=s scales the fitted prior's draws (sample_prior);
        gmm: component=c draws every layer from mixture component c."""
        return generate.sample(self, n, **decoding)

    def edit(self, texts, dims, n, **decoding):
        """n variants of each sentence (a str or a list) with latent dims ("0:32", "0:16,48:64", "-16:";
        vq: code positions) redrawn: from the fitted prior's conditional given the kept dims when the
        model has one (prior="uniform": the training prior, as before)."""
        return generate.edit(self, texts, dims, n, **decoding)

    def interpolate(self, a, b, steps, **decoding):
        """steps sentences from a to b, ends included (slerp per vMF layer, linear otherwise; vq: snapped to codes)."""
        return generate.interpolate(self, a, b, steps, **decoding)

    def analogy(self, a, b, c, n=1, **decoding):
        """a is to b as c is to ?: decode z_c + z_b - z_a (renormalised per vMF layer)."""
        return generate.analogy(self, a, b, c, n=n, **decoding)

    def transfer(self, texts, from_texts, to_texts, strength=None, **decoding):
        """Each sentence moved from the attribute of from_texts to that of to_texts (e.g. negative ->
        positive reviews) along the direction between their codes (method: generate.DEFAULT_DIRECTION,
        the difference of their means, or "probe", a linear probe's normal), by `strength` (default
        generate.DEFAULT_STRENGTH; 0 = the plain reconstruction), and decoded."""
        strength = generate.DEFAULT_STRENGTH if strength is None else strength
        return generate.transfer(self, texts, from_texts, to_texts, strength=strength, **decoding)


def load_trained(path, device="cpu", **overrides):
    """A trained univae checkpoint directory -> the model in eval mode on `device`, for the commands
    that use one (sample.py, python -m univae.app). Anything wrong -> CheckpointError, one line."""
    check_trained(path)
    try:
        model = UniVAE.from_pretrained(path, **overrides)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot load checkpoint: {e}") from None
    return model.to(device).eval()
