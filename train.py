"""Train a UniVAE.

    python train.py                                   # fine-tune the bundled backbone on the bundled reviews, ~10 min
    python train.py --from-scratch                    # the small preset from random weights, same data and budget
    python train.py --init-from DIR --corpus my.txt   # fine-tune a local HF BERT/RoFormer (reference settings)
    python train.py --resume                          # continue OUT/last exactly
    torchrun --nproc-per-node 2 train.py ...          # DistributedDataParallel, one data shard per rank

Flags come from univae.config (TrainConfig, and UniVAEConfig for the VAE fields), so a flag and a
field never disagree. One run per --out at a time (OUT/.lock holds its pid); --keep-last N keeps
the newest N step-N checkpoints. The steps, in order: settle the settings (a pure function), load
the data, build the model, objective and optimiser, then Trainer.fit runs the loop and show()
prints a few reconstructions, samples and an edit.
"""

import argparse
import dataclasses
import os
import sys
import time

import torch
import torch.distributed as dist

from univae import generate, training
from univae.checkpoint import read_config
from univae.config import (
    BOW_FLAGS,
    BUNDLED_MODEL,
    BUNDLED_TRAINING,
    PRESET_TRAINING,
    PRESETS,
    SettingsError,
    TrainConfig,
    add_config_flags,
    from_hf_config,
    preset,
)
from univae.data import Batches, load_sentences, split
from univae.density import PRIOR_FILE, fit_prior
from univae.model import UniVAE
from univae.objective import VAEObjective, char_class_token_masks
from univae.rundir import (
    RunLock,
    RunLocked,
    TrainingError,
    clear_out_dir,
    load_training_state,
)
from univae.tokenizer import build_tokenizer, char_vocab, encode_texts
from univae.trainer import Trainer
from univae.training import keep_freed_memory, param_groups, setup_distributed


def kappa_value(text):
    """--kappa: one concentration ("256") or one per latent layer, lowest first ("64,384,384")."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or comma-separated numbers, got {text!r}") from None
    return values[0] if len(values) == 1 else values


# Architecture fields a from-scratch run may set on top of its preset (UniVAEConfig names); a
# checkpoint (--init-from, --resume) fixes them.
ARCH_FLAGS = {
    "hidden_size": (int, "from scratch: width of the Transformer (small: 192)"),
    "num_hidden_layers": (int, "from scratch: number of Transformer layers (small: 4)"),
    "num_attention_heads": (int, "from scratch: attention heads per layer (small: 3)"),
    "intermediate_size": (int, "from scratch: FFN width (small: 768)"),
}
# VAE fields a user may set on top of a preset or an --init-from checkpoint (UniVAEConfig names).
MODEL_FLAGS = {
    **ARCH_FLAGS,
    "maxlen": (int, "tokens per half, [CLS] and [SEP] included (reference: 32)"),
    "num_latent_layers": (int, "top layers that carry a latent (reference: 4)"),
    "z_dim": (int, "latent dims per latent layer (reference: 16)"),
    "latent": (
        str,
        "latent family: vmf (fixed kappa, constant KL), gaussian (learned variance, KL to N(0, I)), "
        "vq (a codebook per latent layer: discrete codes) or gmm (Gaussian-mixture prior, DEM-VAE)",
    ),
    "kappa": (kappa_value, "vMF concentration (reference: 32), or one per latent layer, lowest first: 64,384,384"),
    "codebook_size": (int, "vq: codes per latent layer (default 512)"),
    "vq_distance": (str, "vq: nearest code by l2 or cosine (default l2)"),
    "vq_beta": (float, "vq: commitment loss weight (default 0.25)"),
    "vq_decay": (float, "vq: EMA decay of the codebook (default 0.99)"),
    "vq_dead_steps": (
        int,
        "vq: re-seed a code from the batch after this many training steps unused (default 100; 0: never)",
    ),
    "mixture_components": (int, "gmm: mixture components per latent layer (default 5)"),
    "attn": (str, "attention backend: auto (split on CPU, flex on CUDA), eager, sdpa, flex, split"),
}
# Model flags that mean something for one latent family only: given with another, they are an error.
FAMILY_FLAGS = {
    "codebook_size": "vq",
    "vq_distance": "vq",
    "vq_beta": "vq",
    "vq_decay": "vq",
    "vq_dead_steps": "vq",
    "mixture_components": "gmm",
}
DEFAULT_TIME_BUDGET = 480.0  # seconds of training when no stopping flag is given: the default run ends within 10 min
BUCKET = 16  # length-sort within groups of 16 batches, then trim each batch (univae.trainer.trim_length)


def fail(message, code=2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p, TrainConfig)
    for name, (kind, help_) in MODEL_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_)
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return given, not argv


# ---------------------------------------------------------------------------------------------- settings


def resume_dir_of(given):
    """The checkpoint --resume names (OUT/last for the bare flag), or None without --resume."""
    if "resume" not in given:
        return None
    return os.path.join(given.get("out", TrainConfig.out), "last") if given["resume"] == "last" else given["resume"]


def starts_from_scratch(given):
    """--from-scratch, or a --preset or architecture flag without --init-from: random weights."""
    implied = "init_from" not in given and ("preset" in given or any(k in given for k in ARCH_FLAGS))
    return bool(given.get("from_scratch")) or implied


def recipe_under(given):
    """The measured recipe a new run gets below the flags -> (training settings, VAE fields).

    From scratch, the preset's (PRESET_TRAINING); from the bundled backbone, BUNDLED_TRAINING and
    BUNDLED_MODEL; none for another --init-from (the reference script's settings) or a resumed run
    (its own saved arguments). The recipe's bag of words (content characters on the lowest latent
    layer, pattern on the top) goes as a whole: --bow-weight 0 or a single latent layer drops it,
    and --bow-layers without --bow-chars drops its per-layer classes (the given layers count every
    token, as without a recipe)."""
    if "resume" in given:
        return {}, {}
    if starts_from_scratch(given):
        recipe, model = dict(PRESET_TRAINING.get(given.get("preset", TrainConfig.preset), {})), {}
    elif given.get("init_from", TrainConfig.init_from) == "bundled":
        recipe, model = dict(BUNDLED_TRAINING), dict(BUNDLED_MODEL)
    else:
        return {}, {}
    if "bow_layers" in recipe:
        if given.get("bow_weight") == 0 or given.get("num_latent_layers", model.get("num_latent_layers")) == 1:
            for name in BOW_FLAGS:
                recipe.pop(name, None)
        elif "bow_layers" in given and "bow_chars" not in given:
            recipe.pop("bow_chars", None)
    return recipe, model


def settle(given, saved_args=None):
    """The run's settings from the flags the user gave and, when resuming, the checkpoint's saved
    train_args: (TrainConfig, model_overrides). Pure: reads no file, touches nothing.

    Precedence, lowest first: TrainConfig's defaults (fine-tune the bundled backbone), the measured
    recipe (recipe_under), the resumed run's own arguments, the flags. Without a stopping flag the
    run gets the default time budget. Raises SettingsError naming the flag."""
    resuming = "resume" in given
    if given.get("from_scratch") and "init_from" in given:
        raise SettingsError(f"--from-scratch contradicts --init-from {given['init_from']}: choose one")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    recipe, model_recipe = recipe_under(given)
    merged = {
        **recipe,
        **{k: v for k, v in (saved_args or {}).items() if k in train_fields},
        **{k: v for k, v in given.items() if k in train_fields},
    }
    if not resuming and starts_from_scratch(given):
        merged.update(init_from="", from_scratch=True)
    if not any(merged.get(k) for k in ("max_steps", "epochs", "time_budget")):
        merged["time_budget"] = DEFAULT_TIME_BUDGET
    try:
        cfg = TrainConfig(**merged)
    except (TypeError, ValueError) as e:
        raise SettingsError(str(e)) from None
    model_overrides = {**model_recipe, **{k: v for k, v in given.items() if k in MODEL_FLAGS}}
    latent = model_overrides.get("latent", "vmf")
    for name, family in FAMILY_FLAGS.items():  # (a resumed run keeps its checkpoint's model fields anyway)
        if name in model_overrides and latent != family and not resuming:
            raise SettingsError(f"--{name.replace('_', '-')} is for --latent {family}, not --latent {latent}")
    if cfg.precision == "fp16" and cfg.device == "cpu":
        raise SettingsError("--precision fp16 needs CUDA; use bf16, fp32 or auto on CPU")
    if "init_from" in given and "preset" in given:
        raise SettingsError(
            f"--preset {given['preset']} contradicts --init-from {cfg.init_from}: the checkpoint fixes the architecture"
        )
    if cfg.preset not in PRESETS:
        raise SettingsError(f"unknown --preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    arch = [k for k in ARCH_FLAGS if k in given]
    if arch and (resuming or "init_from" in given):
        raise SettingsError(
            f"--{arch[0].replace('_', '-')} is for runs from scratch: "
            f"{'the resumed' if resuming else 'the --init-from'} checkpoint fixes the architecture"
        )
    return cfg, model_overrides


def pick_device(cfg, local_rank):
    try:
        return training.pick_device(cfg.device, cfg.precision, local_rank)
    except ValueError as e:
        raise SettingsError(str(e)) from None


def model_maxlen(cfg, model_overrides, resume_dir):
    """maxlen of the model this run will train, before any data work (so bad flags fail fast).
    With --init-from the VAE fields default to UniVAEConfig's, the reference script's settings."""
    if resume_dir:
        return read_config(resume_dir)["univae"]["maxlen"]
    if cfg.init_from:
        raw = read_config(cfg.init_from)
        if "univae" in raw:
            raise SettingsError(
                f"--init-from {cfg.init_from} is a univae checkpoint; use --resume to continue training it"
            )
        return from_hf_config(raw, **model_overrides).maxlen
    return preset(cfg.preset, **model_overrides).maxlen


# ---------------------------------------------------------------------------------------------- building


def load_data(cfg, maxlen, log):
    """The corpus, cut to maxlen - 2 characters per piece, as train / val / test splits."""
    sentences, stats = load_sentences(cfg.corpus, limit=maxlen - 2, text_field=cfg.text_field, strict=cfg.strict)
    if cfg.val:
        val_sentences, _ = load_sentences(cfg.val, limit=maxlen - 2, text_field=cfg.text_field, strict=cfg.strict)
        splits = split(sentences, seed=cfg.split_seed, val_fraction=0.0)
        splits["val"] = val_sentences
    else:
        splits = split(sentences, seed=cfg.split_seed)
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


# ---------------------------------------------------------------------------------------------- main


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    given, default_run = parse_args(argv)
    rank, world, local_rank = setup_distributed()
    master = rank == 0
    log = (lambda *a: print(*a, flush=True)) if master else (lambda *a: None)
    keep_freed_memory()  # before the first big tensor: no page faults for each step's logits (univae/training.py)

    # settle every setting, and fail on a bad one, before touching --out
    resume_dir, state, saved_args = resume_dir_of(given), None, {}
    out = given.get("out", TrainConfig.out)
    lock = RunLock(out)
    try:
        if master:
            lock.check()  # a live run on this --out: refuse at once, before reading or writing anything
        if resume_dir:
            if not os.path.isdir(resume_dir):
                raise SettingsError(f"--resume: no checkpoint at {resume_dir} (nothing to resume)")
            try:
                state, saved_args = load_training_state(resume_dir)
            except (FileNotFoundError, ValueError) as e:
                raise SettingsError(f"--resume: {e}") from None
        cfg, model_overrides = settle(given, saved_args)
        device = pick_device(cfg, local_rank)
        maxlen = model_maxlen(cfg, model_overrides, resume_dir)
    except (RunLocked, FileNotFoundError, ValueError) as e:  # SettingsError is a ValueError
        fail(str(e))
    resuming_in_place = bool(resume_dir) and os.path.realpath(out) == os.path.dirname(os.path.realpath(resume_dir))
    replace_out = master and not resuming_in_place and os.path.isdir(out) and bool(RunLock.contents(out))
    if replace_out and not (cfg.overwrite or default_run):
        fail(f"--out {out} is not empty; pass --resume to continue it or --overwrite to replace it")

    # data, model, objective, optimiser
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    try:
        splits = load_data(cfg, maxlen, log)
        model = build_model(cfg, model_overrides, resume_dir, splits["train"])
        bow_targets = char_class_token_masks(model.tokenizer, splits["train"]) if cfg.bow_chars != "all" else None
        objective = VAEObjective(cfg, model, bow_targets)  # KL weight and schedule, free bits, MDR, BoW heads
        if cfg.word_dropout:  # writes [MASK]: a vocab without one fails here
            model.mask_token_id()
    except (FileNotFoundError, ValueError) as e:  # CorpusError is a ValueError
        fail(str(e))
    tok, c = model.tokenizer, model.config
    train_ids, n_trunc, n_unk = encode_texts(tok, splits["train"], c.maxlen, warn=False)
    val_ids, _, n_unk_val = encode_texts(tok, splits["val"], c.maxlen, warn=False)
    log(describe(model, n_unk, n_unk_val, n_trunc) + f" ({time.time() - t0:.1f}s)")
    if cfg.init_from:
        log(unknown_share(cfg.init_from, n_unk, train_ids, c.pad_token_id))
    model.to(device).train()
    objective.to(device)
    lr = cfg.lr or (2e-5 if cfg.init_from else 1e-3)
    groups = param_groups(model, cfg.weight_decay) + (
        param_groups(objective, cfg.weight_decay) if list(objective.parameters()) else []
    )
    # fused: one kernel over all parameters, on CPU too (6x faster than the per-tensor loop for `small`)
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    batches = Batches(
        train_ids, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world, bucket=BUCKET, pad_id=c.pad_token_id
    )
    run_args = {**dataclasses.asdict(cfg), "lr": lr, "resume": None, "world_size": world}
    trainer = Trainer(
        cfg, model, objective, optimizer, batches, splits, val_ids, out, device, rank, world, lr, run_args
    )
    if state is not None:
        try:
            trainer.load_state(state)
        except SettingsError as e:
            fail(str(e))
        log(f"resumed from {resume_dir} at step {trainer.step}")

    # from here on --out is ours
    if master:
        try:
            lock.acquire()
        except RunLocked as e:
            fail(str(e))
        if lock.stale_pid:
            log(f"{out}/.lock was left by pid {lock.stale_pid}, which is no longer running: taken over")
        if replace_out:
            log(f"replacing {out}/" + (" (the default run always starts afresh)" if default_run else ""))
            clear_out_dir(out)
        trainer.metrics_file = open(os.path.join(out, "metrics.jsonl"), "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            trainer.writer = SummaryWriter(os.path.join(out, "tensorboard"))
        except ImportError:
            pass

    training.stop_on_signals(trainer.stop_signal)
    try:
        trainer.fit()
    except TrainingError as e:  # disk full, an I/O error, non-finite weights or steps: one line, `last` intact
        fail(str(e), code=1)
    finally:
        for f in (trainer.metrics_file, trainer.writer):
            if f is not None:
                f.close()
        if master:
            lock.release()
    if master and not trainer.stop_signal:
        fit_sampling_prior(model, cfg, train_ids, val_ids, out, log)
        show(model, splits["val"])
    if world > 1:
        dist.destroy_process_group()
    if trainer.stop_signal:
        sys.exit(128 + trainer.stop_signal[0])


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
        fail(
            f"could not write {path}: {e.strerror or e}; the checkpoint is complete without it "
            f"(python -m univae.prior --checkpoint {out}/last fits one)",
            code=1,
        )
    info = model.fitted_prior.info
    log(
        f"fitted prior: {info['n_components']}-component Gaussian mixture on {info['n_codes']} training codes, "
        f"mean log-likelihood {info['mean_log_likelihood']:.1f} (val {info['heldout_mean_log_likelihood']:.1f}) "
        f"-> {path} ({time.time() - t0:.0f}s)"
    )


@torch.no_grad()
def show(model, val_sentences, n=5):
    """A few reconstructions, prior samples and one multi-scale edit, as the README promises."""
    model.eval()
    texts = val_sentences[:n]
    print("\nreconstructions (held-out val sentences):")
    for src, rec in zip(texts, model.reconstruct(texts)):
        print(f"  {src}\n    -> {rec}")
    print("\nrandom samples from the prior:")
    for s in model.sample(n):
        print(f"  {s}")
    dims = generate.layer_span(model, 0)  # the lowest latent layer: the default trains it to hold the content
    print(f'\nedit: replace latent {generate.edit_unit(model)} {dims} (the lowest latent layer) of "{texts[0]}":')
    for s in model.edit(texts[0], dims, n=3):
        print(f"  {s}")
    print("\nnext: python sample.py --checkpoint <out>/last --n 10   (see README)")


if __name__ == "__main__":
    main()
