"""The training loop of train.py: a Trainer (one step, evaluation, saving, the loop) and the progress
display. train.py builds the model, objective, optimiser and batches and hands them over; the run
directory it saves into is univae/rundir.py's.

State that a resume must restore (optimiser, data position, RNG, step, elapsed time, objective,
skipped-step count) goes through `Trainer.training_state` / `Trainer.load_state`; everything else
is rebuilt from the flags.
"""

import contextlib
import dataclasses
import math
import os
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from univae import data, training
from univae.config import SettingsError, preset
from univae.density import PRIOR_FILE, fit_prior
from univae.diagnostics import collapse_warning
from univae.model import UniVAE
from univae.objective import VAEObjective, char_class_token_masks
from univae.rundir import Checkpointer, MetricsLog, TrainingError
from univae.tokenizer import build_tokenizer, char_vocab, encode_texts
from univae.training import all_finite, evaluate, length_multiple, lr_at, peak_rss_mb, trim_length


def describe_eval(metrics, c):
    return (
        f"val: ce {metrics['ce']:.3f}, bits/char {metrics['bits_per_char']:.3f}, kl {metrics['kl']:.2f}"
        + (
            f", mi {metrics['mi']:.2f} ({'/'.join(f'{mi:.2f}' for mi in metrics['mi_per_layer'])} per layer)"
            f", au {metrics['au']}/{c.latent_dim}"
            if "au" in metrics
            else ""
        )
        + (f", exact {metrics['exact_match']:.3f}, char-F1 {metrics['char_f1']:.3f}" if "char_f1" in metrics else "")
        + (
            ", codebook perplexity "
            + "/".join(f"{p:.1f}" for p in metrics["codebook"]["perplexity"])
            + ", used "
            + "/".join(f"{u:.2f}" for u in metrics["codebook"]["used_fraction"])
            if "codebook" in metrics
            else ""
        )
        + (
            ", component entropy "
            + "/".join(f"{h:.2f}" for h in metrics["mixture"]["usage_entropy"])
            + ", I(x;c) "
            + "/".join(f"{i:.2f}" for i in metrics["mixture"]["mi_c"])
            if "mixture" in metrics
            else ""
        )
    )


class Trainer:
    """One run's moving parts and its loop: `train_step`, `evaluate`, `save`, `fit`.

    State that a resume must restore (optimiser, data position, RNG, step, elapsed time, objective,
    skipped-step count) goes through `training_state` / `load_state`; everything else is rebuilt."""

    def __init__(
        self,
        cfg,
        model,
        objective,
        optimizer,
        batches,
        splits,
        val_ids,
        out,
        device,
        rank=0,
        world=1,
        lr=1e-3,
        run_args=None,
    ):
        self.cfg, self.model, self.objective, self.optimizer, self.batches = cfg, model, objective, optimizer, batches
        self.splits, self.val_ids, self.out, self.device, self.rank, self.world = (
            splits,
            val_ids,
            out,
            device,
            rank,
            world,
        )
        self.master = rank == 0
        self.lr, self.run_args = lr, run_args or {}
        self.checkpointer = Checkpointer(out, self.run_args, cfg.keep_last, self.master, world, self.log)
        self.extra_params = list(objective.parameters())  # the BoW heads, if any: trained with the model
        net = model
        if cfg.compile:  # length_multiple gives <= maxlen/8 static shapes; dynamic shapes crash Inductor with attn=eager (torch 2.13)
            net = torch.compile(model, dynamic=False)
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.net = net
        dtype = training.autocast_dtype(cfg.precision, device)
        self.precision = training.precision_name(dtype)
        self.length_multiple = length_multiple(cfg.compile, device, dtype)
        self.autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        self.step, self.elapsed, self.skipped, self.bad_in_a_row = 0, 0.0, 0, 0
        self.max_steps = cfg.max_steps or math.inf
        if cfg.epochs:
            self.max_steps = min(self.max_steps, math.ceil(cfg.epochs * batches.steps_per_epoch))
        self.budget = cfg.time_budget or math.inf
        self.stop_signal = []
        self.metrics_log = MetricsLog()  # train.py gives rank 0 the run directory's log

    def log(self, *a):
        if self.master:
            print(*a, flush=True)

    # -------------------------------------------------------------- state

    def training_state(self):
        state = training.loop_state(self)
        if self.objective.state_dict():  # BoW heads, MDR multiplier
            state["objective"] = self.objective.state_dict()
        return state

    def load_state(self, state):
        try:  # a run resumed with other --bow-weight / --bow-layers / --target-rate has other optimiser groups and state
            self.objective.load_state_dict(state.get("objective", {}))
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            raise SettingsError(
                f"--resume: the checkpoint was trained with another --bow-weight, --bow-layers or --target-rate "
                f"({str(e).splitlines()[0]}); resume with the flags it was trained with"
            ) from None
        training.restore_loop_state(self, state)

    # -------------------------------------------------------------- one step, evaluation, saving

    def train_step(self, progress):
        """One optimiser step on the next batch -> (logs, real tokens seen). A step whose loss or
        gradient is not finite changes no weight and no optimiser state: it is skipped and counted."""
        c, cfg = self.model.config, self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, progress, self.lr, cfg.warmup)
        src = self.batches.next_batch()
        real = src.ne(c.pad_token_id)  # on the CPU copy: no device sync
        tokens = int(real.sum()) * 2 * self.world
        src = src[:, : trim_length(int(real.sum(1).max()), c.maxlen, self.length_multiple)].to(
            self.device, non_blocking=True
        )
        with self.autocast:
            input_ids, token_type_ids = data.join(src)
            out = self.net(input_ids, token_type_ids, word_dropout=cfg.word_dropout, code_dropout=cfg.code_dropout)
            loss, logs = self.objective(out, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.world > 1:  # DDP averages the model's gradients; the BoW heads are outside it
            for p in self.extra_params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        self.scaler.unscale_(self.optimizer)
        params = [*self.model.parameters(), *self.extra_params]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf, foreach=True)
        finite = torch.isfinite(loss) & (
            torch.isfinite(grad_norm) | self.scaler.is_enabled()
        )  # fp16: the scaler skips inf grads itself
        if self.world > 1:  # every rank skips the same steps
            finite = finite.float()
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite):  # one host sync per step: the price of never applying a NaN
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.objective.update_multiplier(out.kl)
            self.bad_in_a_row = 0
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.bad_in_a_row += 1
            self.log(
                f"step {self.step + 1}: non-finite loss or gradient (loss {loss.detach().item():.4g}), step skipped "
                f"({self.bad_in_a_row} in a row, {self.skipped} in all)"
            )
            if self.bad_in_a_row >= cfg.max_bad_steps:
                last = os.path.realpath(os.path.join(self.out, "last"))
                raise TrainingError(
                    f"{self.bad_in_a_row} non-finite steps in a row at step {self.step + 1}; stopped without saving "
                    + (f"({self.out}/last is still {os.path.basename(last)}). " if os.path.exists(last) else ". ")
                    + "Lower --lr, keep --grad-clip on, or try --precision fp32"
                )
        self.step += 1
        return logs, tokens

    def evaluate(self, final=True):
        """Validation row to metrics.jsonl and the log, with the collapse warning if any. A warning
        before the end is qualified: a layer quiet at one evaluation can still come alive later."""
        if self.master:
            metrics, _ = evaluate(
                self.model,
                self.val_ids,
                self.splits["val"],
                self.cfg.eval_sentences,
                batch_size=self.cfg.batch_size,  # the training step's shapes: evaluating adds no higher peak
                autocast=self.autocast,
                au_delta=self.cfg.au_delta,
            )
            self.metrics_log.record({"step": self.step, "split": "val", **metrics})
            self.log(f"step {self.step} " + describe_eval(metrics, self.model.config))
            warning = collapse_warning(metrics, self.model.config, self.cfg.au_delta)
            if warning:
                self.log(
                    warning if final else f"{warning} (at step {self.step}; it can still change before the run ends)"
                )
        if self.world > 1:
            dist.barrier()

    def save(self):
        """step-N, then `last` -> step-N, then prune to --keep-last. Weights that are not finite are
        never written; a failed write leaves `last` at the previous complete checkpoint."""
        if not all_finite(self.model):
            raise TrainingError(
                f"the weights at step {self.step} are not finite; not saved ({self.out}/last is unchanged)"
            )
        self.checkpointer.save(self.step, self.model, self.training_state())  # every rank gathers its RNG state

    # -------------------------------------------------------------- the loop

    def should_stop(self):
        return training.stop_everywhere(self.elapsed >= self.budget or bool(self.stop_signal), self.world)

    def progress(self):
        """Fraction of the run done, by steps or time, whichever is further (the lr schedule's clock)."""
        return training.run_progress(self.step, self.max_steps, self.elapsed, self.budget)

    def fit(self):
        """Train until max steps, the time budget or a signal; then save and evaluate once more.
        Returns why it stopped."""
        cfg = self.cfg
        elapsed_before, t_start = self.elapsed, time.time()
        progress = Progress(self, enabled=self.master)
        limits = ([f"{self.budget:.0f}s"] if self.budget < math.inf else []) + (
            [f"{self.max_steps} steps"] if self.max_steps < math.inf else []
        )
        with self.autocast:  # `auto` picks by autocast and grad mode (univae/attention.py): ask as the step does
            backend = self.model.backend(self.device)
        self.log(
            f"training on {self.device} ({self.precision}, attn {backend})"
            + (f" for at most {' / '.join(limits)}" if limits else "")
        )
        while self.step < self.max_steps:
            self.elapsed = elapsed_before + time.time() - t_start
            if self.should_stop():
                break
            logs, tokens = self.train_step(self.progress())
            progress.update(tokens)
            if self.step % cfg.log_every == 0:
                row = {
                    "step": self.step,
                    **{k: float(v) for k, v in logs.items()},
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "tokens_per_s": progress.tokens_per_s(),
                    "peak_rss_mb": round(peak_rss_mb()),
                }
                if self.skipped:
                    row["skipped_steps"] = self.skipped
                self.metrics_log.record(row)
                progress.show(row)
            if self.step % cfg.eval_every == 0:
                self.evaluate(final=self.step >= self.max_steps)
            if self.step % cfg.save_every == 0:
                self.save()
        progress.close()
        self.elapsed = elapsed_before + time.time() - t_start
        why = "signal" if self.stop_signal else ("time budget" if self.elapsed >= self.budget else "max steps")
        self.log(
            f"stopped at step {self.step} ({why}, {self.elapsed:.0f}s of training"
            + (f", {self.skipped} non-finite steps skipped" if self.skipped else "")
            + ")"
        )
        self.save()
        if self.step % cfg.eval_every or self.step == 0:
            self.evaluate()
        return why


class Progress:
    """On a terminal a tqdm bar; elsewhere (a log file, CI) one plain line per --log-every row."""

    def __init__(self, trainer, enabled):
        self.trainer, self.enabled = trainer, enabled
        self.tty = enabled and sys.stderr.isatty()
        total = None if trainer.max_steps == math.inf else trainer.max_steps
        self.bar = (
            tqdm(total=total, initial=trainer.step, desc="train", dynamic_ncols=True, file=sys.stderr)
            if self.tty
            else None
        )
        self.tokens, self.t = 0, time.time()

    def update(self, tokens):
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(1)

    def tokens_per_s(self):
        """Real tokens per second since the last row (and restart the count)."""
        now = time.time()
        rate = self.tokens / max(now - self.t, 1e-9)
        self.tokens, self.t = 0, now
        return rate

    def show(self, row):
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{row['loss']:.3f}",
                **({"kl": f"{row['kl']:.1f}"} if "kl" in row else {}),
                tok_s=f"{row['tokens_per_s']:.0f}",
            )
        elif self.enabled:
            t = self.trainer
            total = "" if t.max_steps == math.inf else f"/{t.max_steps}"
            terms = "".join(f"  {k} {row[k]:.{p}f}" for k, p in (("ce", 3), ("kl", 1)) if k in row)
            print(
                f"step {row['step']}{total}  loss {row['loss']:.3f}{terms}  lr {row['lr']:.2e}  "
                f"{row['tokens_per_s']:.0f} tok/s  {t.elapsed:.0f}s",
                flush=True,
            )

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------- building a run


BUCKET = 16  # length-sort within groups of 16 batches, then trim each batch (trim_length)


def build_trainer(cfg, model_overrides, resume_dir, maxlen, device, out, rank=0, world=1, log=print):
    """Everything a run trains, in a Trainer: the corpus split, the model (fresh, from --init-from or
    from the checkpoint it resumes), the objective, AdamW and the batches -> (trainer, train ids).
    Bad input (a corpus too small, a vocab without the [MASK] that word dropout writes) raises
    ValueError or FileNotFoundError before anything is written."""
    t0 = time.time()
    splits = load_splits(cfg, maxlen, log)
    model = build_model(cfg, model_overrides, resume_dir, splits["train"])
    bow_targets = char_class_token_masks(model.tokenizer, splits["train"]) if cfg.bow_chars != "all" else None
    objective = VAEObjective(cfg, model, bow_targets)  # KL weight and schedule, free bits, MDR, BoW heads
    if cfg.word_dropout:
        model.mask_token_id()
    tok, c = model.tokenizer, model.config
    train_ids, n_trunc, n_unk = encode_texts(tok, splits["train"], c.maxlen, warn=False)
    val_ids, _, n_unk_val = encode_texts(tok, splits["val"], c.maxlen, warn=False)
    log(describe(model, n_unk, n_unk_val, n_trunc) + f" ({time.time() - t0:.1f}s)")
    if cfg.init_from:
        log(unknown_share(cfg.init_from, n_unk, train_ids, c.pad_token_id))
    model.to(device).train()
    objective.to(device)
    lr = cfg.lr or (2e-5 if cfg.init_from else 1e-3)
    groups = training.param_groups(model, cfg.weight_decay) + (
        training.param_groups(objective, cfg.weight_decay) if list(objective.parameters()) else []
    )
    # fused: one kernel over all parameters, on CPU too (6x faster than the per-tensor loop for `small`)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    batches = data.Batches(
        train_ids, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world, bucket=BUCKET, pad_id=c.pad_token_id
    )
    run_args = {**dataclasses.asdict(cfg), "lr": lr, "resume": None, "world_size": world}
    trainer = Trainer(
        cfg, model, objective, optimizer, batches, splits, val_ids, out, device, rank, world, lr, run_args
    )
    return trainer, train_ids


def load_splits(cfg, maxlen, log):
    """The corpus, cut to maxlen - 2 characters per piece, as train / val / test splits."""
    sentences, stats = data.load_sentences(cfg.corpus, limit=maxlen - 2, text_field=cfg.text_field, strict=cfg.strict)
    if cfg.val:
        val_sentences, _ = data.load_sentences(cfg.val, limit=maxlen - 2, text_field=cfg.text_field, strict=cfg.strict)
        splits = data.split(sentences, seed=cfg.split_seed, val_fraction=0.0)
        splits["val"] = val_sentences
    else:
        splits = data.split(sentences, seed=cfg.split_seed)
    log(
        f"corpus {cfg.corpus}: {stats['lines']} lines, {stats['sentences']} sentences "
        f"({stats['duplicates']} duplicates dropped, {stats['skipped']} bad lines skipped) -> "
        f"train {len(splits['train'])} / val {len(splits['val'])} / test {len(splits['test'])}"
    )
    for message in stats["problems"]:
        log(f"  skipped {message}")
    return splits


def build_model(cfg, model_overrides, resume_dir, train_sentences):
    """Resumed, fine-tuned from a HF checkpoint, or a fresh preset with the corpus's characters as vocab."""
    if resume_dir:
        model = UniVAE.from_pretrained(resume_dir, **{k: v for k, v in model_overrides.items() if k == "attn"})
        model.fitted_prior = None  # fitted to the old weights' codes; refitted when this run ends
        return model
    if cfg.init_from:
        return UniVAE.from_pretrained(cfg.init_from, **model_overrides)
    vocab = char_vocab(train_sentences, min_count=cfg.min_char_count)
    tokenizer = build_tokenizer(vocab)
    tokenizer.do_lower_case = True
    return UniVAE(preset(cfg.preset, **{**model_overrides, "vocab_size": len(vocab)}), tokenizer)


def describe(model, n_unk, n_unk_val, n_trunc):
    c = model.config
    return (
        f"model: {c.model_type} {c.num_hidden_layers}x{c.hidden_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"vocab {c.vocab_size}, maxlen {c.maxlen}, latent {c.latent} {c.num_latent_layers}x{c.z_dim}"
        + "".join(f" {d}" for d in [model.family.describe(c)] if d)
        + f"; {n_unk} train / {n_unk_val} val tokens are [UNK], {n_trunc} train sentences truncated"
    )


def unknown_share(backbone, n_unk, ids, pad_id):
    """The line saying how much of the corpus the backbone's vocab cannot spell (those become [UNK])."""
    n_chars = int(ids.ne(pad_id).sum()) - 2 * len(ids)  # [CLS] and [SEP] are not the corpus's
    share = n_unk / max(n_chars, 1)
    line = f"{share:.2%} of the training corpus's {n_chars} tokens are outside the vocab of {backbone} ([UNK])"
    if share > 0.01:
        line += ": the model cannot read or write them; a backbone pretrained on this corpus (python -m univae.pretrain) can"
    return line


def fit_sampling_prior(model, cfg, train_ids, val_ids, out, log):
    """Fit the density that sampling and edits draw from (univae/density.py) to the final model's
    training codes and write it into OUT/last (atomically; `python -m univae.prior` refits one)."""
    if not cfg.prior_components or model.family.space == "codebook":  # vq: its codes stay uniform
        return
    k = min(cfg.prior_components, len(train_ids) // 10)  # at least 10 codes per component
    if k < 1:
        log(f"no fitted prior: {len(train_ids)} training sentences are too few; sampling uses the training prior")
        return
    t0 = time.time()
    model.fitted_prior = fit_prior(
        model,
        train_ids,
        n_components=k,
        seed=cfg.seed,
        source=f"train split (seed {cfg.split_seed}) of {cfg.corpus}",
        heldout_ids=val_ids,
    )
    path = os.path.join(out, "last", PRIOR_FILE)
    try:
        model.fitted_prior.save(path)
    except OSError as e:
        raise TrainingError(
            f"could not write {path}: {e.strerror or e}; the checkpoint is complete without it "
            f"(python -m univae.prior --checkpoint {out}/last fits one)"
        ) from None
    info = model.fitted_prior.info
    log(
        f"fitted prior: {info['n_components']}-component Gaussian mixture on {info['n_codes']} training codes, "
        f"mean log-likelihood {info['mean_log_likelihood']:.1f} (val {info['heldout_mean_log_likelihood']:.1f}) "
        f"-> {path} ({time.time() - t0:.0f}s)"
    )
