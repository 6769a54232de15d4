"""The training objective train.py minimises, with the standard remedies for posterior collapse.

UniVAE.forward returns the raw terms; this turns them into the loss:

    loss = ce + (beta_t * rate + multiplier * (target_rate - kl)) / tokens + bow_weight * bow
              (+ vq_beta * commitment for --latent vq)

    ce          mean cross-entropy per real target token (UniVAEOutput.ce)
    kl          KL(q(z|x) || p(z)) per sentence, summed over dims and latent layers, batch mean
    rate        kl; with --free-bits lam, sum over layers and dims of max(lam, KL_d), KL_d the batch
                mean of dim d's KL (Kingma et al. 2016): a dim under lam gets no KL gradient at all
    tokens      the mean number of target tokens per sentence (--kl-reduction per-token, the
                default: beta 1 then gives exactly the negative ELBO per token), or 1 (per-sentence)
    beta_t      --kl-weight * kl_anneal_weight(step) (none / linear / cyclical as in Optimus)
    multiplier  MDR's Lagrange multiplier (Pelsmaeker & Aziz 2019), only with --target-rate r:
                minimising over the model and maximising over multiplier >= 0 enforces kl >= r
    bow         mean over latent layers of the bag-of-words NLL per real target token, predicted
                from that layer's z alone (a multi-task loss that makes every z_l carry the words);
                --bow-layers picks the layers (so that one layer is made to carry the words);
                --bow-chars content (pattern) counts only the tokens that are content (pattern)
                characters (char_class_token_masks), one class for every chosen layer or one per
                layer, so that a layer is made to carry what the sentence is about, or how it is said

--latent gmm (DEM-VAE, latents.GaussianMixture): kl = kl_c + z part, and two parts of it are
reweighed, rate -= (1 - dispersion_weight) * dispersion + (1 - mi_weight) * mi_c; both weights 1
give the plain ELBO. With --free-bits the floor applies per dim to the reweighed z part,
kl_per_dim - (1 - dispersion_weight) * dispersion (flooring the KL alone would leave the dispersion
bonus unopposed below the floor, and the components would drift apart without limit), and kl_c
(reweighed) is added whole.
--latent vq: the KL is the constant log K per layer; the commitment term pulls the encoder's
vector towards its code (vq_beta is a model field, UniVAEConfig, so that UniVAEOutput.loss has it).
Both losses come from one formula, vae_loss.

For fixed-kappa vMF and VQ the KL is a constant: loss = ce (+ commitment) (+ bow_weight * bow) and
the KL flags are an error, as are the gmm weights for any other family. The BoW heads and the
multiplier live here, not in the model: they exist only for training, so checkpoints and the model's config stay free of them; train.py saves `state_dict()` in the
training state and adds `parameters()` to the optimiser.
"""

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from univae.config import ANNEAL_SCHEDULES, TrainConfig
from univae.cross_entropy import summed_cross_entropy
from univae.metrics import CharClasses


def vae_loss(ce, commitment=None, vq_beta=0.0, penalty=None, tokens=1.0):
    """The loss formula, in one place: ce (+ vq_beta * commitment, VQ) (+ penalty / tokens, families
    with a KL to optimise). UniVAE.forward calls it with penalty = kl and tokens = target tokens per
    sentence (the plain negative ELBO per token); VAEObjective with its weighed, floored, annealed rate."""
    loss = ce
    if commitment is not None:
        loss = loss + vq_beta * commitment
    if penalty is not None:
        loss = loss + penalty / tokens
    return loss


def target_ce(logits, labels):
    """Mean cross-entropy per counted target token -> (ce, n_tokens). logits (B, m, V) predict
    labels (B, m - 1), -100 where nothing counts (padding).

    sum / count rather than mean: a batch with no counted token (targets of [CLS] alone) gives 0, not
    NaN. The last position predicts nothing: an ignored label there keeps the logits one contiguous
    view (slicing them off would copy B x m x V floats, and their gradient again). The sum is
    summed_cross_entropy: F.cross_entropy's float32 value and gradient without float32 copies of
    bf16 logits."""
    n_tokens = (labels != -100).sum()
    ce = summed_cross_entropy(logits.flatten(0, 1), F.pad(labels, (0, 1), value=-100).flatten())
    return ce / n_tokens.clamp_min(1), n_tokens


def kl_anneal_weight(step, schedule="none", steps=0, cycles=1, ratio_zero=0.5, ratio_increase=0.25):
    """The KL weight multiplier in [0, 1] at optimiser step `step` (0 = the first step).

    linear:   step / steps, then 1.
    cyclical: `cycles` periods of steps / cycles each; within a period the first ratio_zero is 0
              (a plain autoencoder learns to use z), the next ratio_increase ramps linearly to 1,
              the rest holds 1 (Optimus' frange_cycle_zero_linear, Fu et al. 2019). 1 after `steps`.
    """
    if schedule == "none" or step >= steps:
        return 1.0
    if schedule == "linear":
        return step / steps
    if schedule != "cyclical":
        raise ValueError(f"kl anneal schedule must be one of {ANNEAL_SCHEDULES}, got {schedule!r}")
    period = steps / cycles
    t = (step % period) / period  # position in the current cycle, [0, 1)
    if t < ratio_zero:
        return 0.0
    return min(1.0, (t - ratio_zero) / ratio_increase)


def char_class_token_masks(tokenizer, sentences):
    """{"content": mask, "pattern": mask}, each (vocab_size,) bool: the tokens that are one content
    (pattern) character by univae.metrics.CharClasses over `sentences`, one document each; a '##'
    form counts as its character. Special tokens ([CLS], ...) are longer than one character, so they
    are in neither. Pattern, as in the evaluation, holds punctuation."""
    classes = CharClasses(sentences)
    vocab = tokenizer.get_vocab()
    masks = {kind: torch.zeros(len(vocab), dtype=torch.bool) for kind in ("content", "pattern")}
    for token, i in vocab.items():
        ch = token[2:] if token.startswith("##") else token
        if len(ch) == 1:
            masks["content" if classes.is_content(ch) else "pattern"][i] = True
    return masks


def bow_plan(layers_spec, chars_spec, n_latent):
    """--bow-layers "0,-1" --bow-chars "content,pattern" -> [(0, "content"), (n_latent - 1, "pattern")],
    sorted by layer. An empty --bow-layers means every latent layer; one --bow-chars class goes with
    every chosen layer, a list gives one class per --bow-layers entry, in the same order."""
    chars = [part.strip() for part in chars_spec.split(",")]
    if not layers_spec:
        if len(chars) > 1:
            raise ValueError(
                f"--bow-chars {chars_spec} gives one class per --bow-layers entry; name the layers with --bow-layers"
            )
        return [(l, chars[0]) for l in range(n_latent)]
    parts = layers_spec.split(",")
    if len(chars) not in (1, len(parts)):
        raise ValueError(
            f"--bow-chars {chars_spec} has {len(chars)} classes for the {len(parts)} layers of "
            f"--bow-layers {layers_spec}; give one class, or one per layer"
        )
    plan = {}
    kinds = chars if len(chars) > 1 else chars * len(parts)
    for part, kind in zip(parts, kinds):
        try:
            j = int(part)
        except ValueError:
            raise ValueError(f"--bow-layers {layers_spec}: {part.strip()!r} is not a latent-layer index") from None
        if not -n_latent <= j < n_latent:
            raise ValueError(
                f"--bow-layers {layers_spec}: layer {j} does not exist; the model has {n_latent} latent layers "
                f"(0..{n_latent - 1}, or -{n_latent}..-1 from the top)"
            )
        if plan.setdefault(j % n_latent, kind) != kind:
            raise ValueError(
                f"--bow-layers {layers_spec}: layer {j % n_latent} is named twice, with --bow-chars "
                f"{plan[j % n_latent]} and {kind}"
            )
    return sorted(plan.items())


def check_family_flags(cfg, latent, family):
    """A flag that acts on something this latent family lacks is an error: the KL flags on a constant
    KL (fixed-kappa vMF, VQ), the mixture weights on anything but gmm."""
    if family.kl_is_constant:
        useless = [
            flag
            for flag, on in (
                ("--kl-weight", cfg.kl_weight != 1.0),
                ("--kl-anneal", cfg.kl_anneal != "none"),
                ("--free-bits", cfg.free_bits > 0),
                ("--target-rate", cfg.target_rate > 0),
            )
            if on
        ]
        if useless:
            raise ValueError(
                f"{', '.join(useless)} act on the KL, but --latent {latent} {family.constant_kl_reason} has a "
                "constant KL; "
                "use --latent gaussian, or --word-dropout / --bow-weight, which work with any latent"
            )
    if not family.has_components and (
        cfg.dispersion_weight != TrainConfig.dispersion_weight or cfg.mi_weight != TrainConfig.mi_weight
    ):
        raise ValueError(
            f"--dispersion-weight and --mi-weight act on the mixture prior of --latent gmm, not on --latent {latent}"
        )


def bow_token_masks(plan, bow_targets, vocab_size, bow_chars):
    """(heads, vocab) bool: the token ids each bag-of-words head counts, from bow_plan's classes and
    char_class_token_masks' masks; None when every head counts every token."""
    if all(kind == "all" for _, kind in plan):
        return None
    if bow_targets is None:
        raise ValueError(f"--bow-chars {bow_chars} needs the token masks (char_class_token_masks)")
    for kind, m in bow_targets.items():
        if m.shape != (vocab_size,) or m.dtype != torch.bool:
            raise ValueError(
                f"bow_targets[{kind!r}] must be a bool tensor of shape ({vocab_size},), got {m.dtype} {tuple(m.shape)}"
            )
    everything = torch.ones(vocab_size, dtype=torch.bool)
    return torch.stack([everything if kind == "all" else bow_targets[kind] for _, kind in plan])


class VAEObjective(nn.Module):
    """loss, logs = objective(out, step); see the module docstring. `cfg` is a TrainConfig."""

    def __init__(self, cfg, model, bow_targets=None):
        """bow_targets: {"content": mask, "pattern": mask} of (vocab_size,) bool tensors, the token ids
        each --bow-chars class counts (char_class_token_masks); needed when a class other than all is
        chosen."""
        super().__init__()
        c, family = model.config, model.family
        self.kl_constant = family.kl_is_constant
        self.kl_weight, self.kl_reduction = cfg.kl_weight, cfg.kl_reduction
        self.anneal = dict(
            schedule=cfg.kl_anneal,
            steps=cfg.kl_anneal_steps,
            cycles=cfg.kl_cycles,
            ratio_zero=cfg.kl_ratio_zero,
            ratio_increase=cfg.kl_ratio_increase,
        )
        self.free_bits, self.target_rate, self.mdr_lr = cfg.free_bits, cfg.target_rate, cfg.mdr_lr
        self.bow_weight = cfg.bow_weight
        check_family_flags(cfg, c.latent, family)
        self.mixture = family.has_components
        self.dispersion_weight, self.mi_weight = cfg.dispersion_weight, cfg.mi_weight
        self.vq_beta = c.vq_beta
        if self.target_rate > 0:
            self.register_buffer("mdr_multiplier", torch.zeros(()))
        plan = bow_plan(cfg.bow_layers, cfg.bow_chars, c.num_latent_layers)
        self.bow_layers = [l for l, _ in plan]
        if self.bow_weight > 0:
            self.bow = nn.ModuleList(nn.Linear(c.z_dim, c.vocab_size) for _ in self.bow_layers)
            for head in self.bow:
                nn.init.normal_(head.weight, std=c.initializer_range)
                nn.init.zeros_(head.bias)
        masks = bow_token_masks(plan, bow_targets, c.vocab_size, cfg.bow_chars)
        self.register_buffer("bow_targets", masks, persistent=False)  # (heads, vocab) or None
        self.z_dim = c.z_dim

    def bow_loss(self, z, labels):
        """Mean over the --bow-layers latent layers l (all by default) of -log softmax(bow_l(z_l))[w]
        per real target token w.

        z (B, n*z_dim); labels (B, T) with -100 on padding (UniVAEOutput.labels: the same tokens the
        CE counts, the closing [SEP] included)."""
        real = labels != -100
        words = labels.clamp_min(0)
        per_layer = []
        codes = z.split(self.z_dim, dim=-1)
        for j, (head, l) in enumerate(zip(self.bow, self.bow_layers)):
            counted = real if self.bow_targets is None else real & self.bow_targets[j][words]
            log_p = F.log_softmax(head(codes[l]).float(), dim=-1)  # (B, V)
            nll = -log_p.gather(1, words)  # (B, T)
            per_layer.append(nll.masked_fill(~counted, 0).sum() / counted.sum().clamp_min(1))  # no host sync
        return torch.stack(per_layer).mean()

    def forward(self, out, step):
        """out: UniVAEOutput of a training forward; step: optimiser steps done so far.
        -> (loss, logs), logs holding tensors or floats (call .item() only when logging)."""
        logs = {"ce": out.ce, "kl": out.kl}
        penalty, tokens = None, 1.0
        if out.commitment is not None:  # vq
            logs["commitment"] = out.commitment
        if not self.kl_constant:
            beta = self.kl_weight * kl_anneal_weight(step, **self.anneal)
            rate = out.kl
            if self.mixture:  # DEM-VAE's weights on the dispersion and I(x; c), both inside the KL
                z_part = out.kl_per_dim - (1 - self.dispersion_weight) * out.dispersion  # (n_latent, z_dim)
                if self.free_bits > 0:
                    z_part = z_part.clamp_min(self.free_bits)
                rate = z_part.sum() + out.kl_c - (1 - self.mi_weight) * out.mi_c
                logs["dispersion"], logs["mi_c"] = out.dispersion.sum(), out.mi_c
                if self.free_bits > 0:
                    logs["kl_free_bits"] = rate
            elif self.free_bits > 0:
                rate = out.kl_per_dim.clamp_min(self.free_bits).sum()  # no gradient below the floor
                logs["kl_free_bits"] = rate
            penalty = beta * rate
            if self.target_rate > 0:
                penalty = penalty + self.mdr_multiplier * (self.target_rate - out.kl)
                logs["mdr_multiplier"] = self.mdr_multiplier.clone()
            tokens = out.n_tokens / out.labels.shape[0] if self.kl_reduction == "per-token" else 1.0
            logs["kl_weight"] = beta
        loss = vae_loss(out.ce, out.commitment, self.vq_beta, penalty, tokens)
        if self.bow_weight > 0:
            bow = self.bow_loss(out.z, out.labels)
            loss = loss + self.bow_weight * bow
            logs["bow"] = bow
        logs["loss"] = loss
        return loss, {k: v.detach() if torch.is_tensor(v) else v for k, v in logs.items()}

    @torch.no_grad()
    def update_multiplier(self, kl):
        """MDR's dual step after each optimiser step: multiplier += mdr_lr * (target_rate - kl), kept >= 0.

        Projected gradient ascent on the Lagrangian, in nats of rate deficit; the batch KL is averaged
        over DDP ranks so that every rank holds the same multiplier. No-op without --target-rate."""
        if self.target_rate <= 0:
            return
        kl = kl.detach().float().clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(kl)
            kl /= dist.get_world_size()
        self.mdr_multiplier.add_(self.mdr_lr * (self.target_rate - kl)).clamp_(min=0)
