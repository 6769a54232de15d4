"""Train a UniVAE.

    python train.py                                   # fine-tune the bundled backbone on the bundled reviews, ~10 min
    python train.py --from-scratch                    # the small preset from random weights, same data and budget
    python train.py --init-from DIR --corpus my.txt   # fine-tune a local HF BERT/RoFormer (reference settings)
    python train.py --resume                          # continue OUT/last exactly
    torchrun --nproc-per-node 2 train.py ...          # DistributedDataParallel, one data shard per rank

Flags come from univae.config (TrainConfig, and UniVAEConfig for the VAE fields), so a flag and a
field never disagree. One run per --out at a time (OUT/.lock holds its pid); --keep-last N keeps
the newest N step-N checkpoints. The steps, in order: resolve the settings (univae.settings, pure), load
the data, build the model, objective and optimiser, then Trainer.fit runs the loop and show()
prints a few reconstructions, samples and an edit.
"""

import argparse
import os
import sys

import torch
import torch.distributed as dist

from univae import edit_dims, settings, training
from univae.cli import CLIError, Parser, fail
from univae.config import (
    SettingsError,
    TrainConfig,
)
from univae.rundir import (
    MetricsLog,
    RunLock,
    RunLocked,
    TrainingError,
    clear_out_dir,
    load_training_state,
)
from univae.trainer import build_trainer, fit_sampling_prior
from univae.training import keep_freed_memory, setup_distributed

PROG = "train.py"


def parse_args(argv):
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    settings.add_train_flags(p)
    try:
        args = p.parse_args(argv)
    except CLIError as e:
        fail(PROG, e)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return given, not argv


# ---------------------------------------------------------------------------------------------- main


def resolve_run(given, default_run, master, local_rank):
    """Every setting resolved, and a bad one failed on, before --out is touched: -> (cfg,
    model_overrides, device, maxlen, resume_dir, training state or None, the run's lock, whether
    --out's old contents are to be replaced)."""
    resume_dir, state, saved_args = settings.resume_dir_of(given), None, {}
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
        cfg, model_overrides = settings.resolve(given, saved_args)
        device = settings.pick_device(cfg, local_rank)
        maxlen = settings.model_maxlen(cfg, model_overrides, resume_dir)
    except (RunLocked, FileNotFoundError, ValueError) as e:  # SettingsError is a ValueError
        fail(PROG, str(e))
    resuming_in_place = bool(resume_dir) and os.path.realpath(out) == os.path.dirname(os.path.realpath(resume_dir))
    replace_out = master and not resuming_in_place and os.path.isdir(out) and bool(RunLock.contents(out))
    if replace_out and not (cfg.overwrite or default_run):
        fail(PROG, f"--out {out} is not empty; pass --resume to continue it or --overwrite to replace it")
    return cfg, model_overrides, device, maxlen, resume_dir, state, lock, replace_out


def claim_out(trainer, lock, replace_out, default_run, log):
    """From here on --out is this run's: take the lock, clear old contents if replacing, open the logs."""
    out = lock.out
    try:
        lock.acquire()
    except RunLocked as e:
        fail(PROG, str(e))
    if lock.stale_pid:
        log(f"{out}/.lock was left by pid {lock.stale_pid}, which is no longer running: taken over")
    if replace_out:
        log(f"replacing {out}/" + (" (the default run always starts afresh)" if default_run else ""))
        clear_out_dir(out)
    trainer.metrics_log = MetricsLog(out, tensorboard=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    given, default_run = parse_args(argv)
    rank, world, local_rank = setup_distributed()
    master = rank == 0
    log = (lambda *a: print(*a, flush=True)) if master else (lambda *a: None)
    keep_freed_memory()  # before the first big tensor: no page faults for each step's logits (univae/training.py)

    cfg, model_overrides, device, maxlen, resume_dir, state, lock, replace_out = resolve_run(
        given, default_run, master, local_rank
    )
    out = lock.out

    torch.manual_seed(cfg.seed)
    try:
        trainer, train_ids = build_trainer(cfg, model_overrides, resume_dir, maxlen, device, out, rank, world, log)
    except (FileNotFoundError, ValueError) as e:  # CorpusError is a ValueError
        fail(PROG, str(e))
    model = trainer.model
    if state is not None:
        try:
            trainer.load_state(state)
        except SettingsError as e:
            fail(PROG, str(e))
        log(f"resumed from {resume_dir} at step {trainer.step}")

    if master:
        claim_out(trainer, lock, replace_out, default_run, log)

    training.stop_on_signals(trainer.stop_signal)
    try:
        trainer.fit()
    except TrainingError as e:  # disk full, an I/O error, non-finite weights or steps: one line, `last` intact
        fail(PROG, str(e), code=1)
    finally:
        trainer.metrics_log.close()
        if master:
            lock.release()
    if master and not trainer.stop_signal:
        try:
            fit_sampling_prior(model, cfg, train_ids, trainer.val_ids, out, log)
        except TrainingError as e:
            fail(PROG, str(e), code=1)
        show(model, trainer.splits["val"])
    if world > 1:
        dist.barrier()  # every rank leaves together, after rank 0's prior fit and demo
        dist.destroy_process_group()
    if trainer.stop_signal:
        sys.exit(128 + trainer.stop_signal[0])


@torch.no_grad()
def show(model, val_sentences, n=5):
    """A few reconstructions, prior samples and an edit at each scale, as the README promises."""
    model.eval()
    texts = val_sentences[:n]
    print("\nreconstructions (held-out val sentences):")
    for src, rec in zip(texts, model.reconstruct(texts)):
        print(f"  {src}\n    -> {rec}")
    print("\nrandom samples from the prior:")
    for s in model.sample(n):
        print(f"  {s}")
    # one edit per scale: each latent layer's dims redrawn in turn, the rest of the code kept
    reconstruction = model.reconstruct(texts[:1])[0]
    print(f'\nedits of "{texts[0]}", one latent layer redrawn at a time (lowest first; = marks the reconstruction):')
    for j in range(model.config.num_latent_layers):
        dims = edit_dims.layer_span(model, j)
        edits = [("= " if s == reconstruction else "") + s for s in model.edit(texts[0], dims, n=2)]
        print(f"  layer {j} ({edit_dims.edit_unit(model)} {dims}): {'  |  '.join(edits)}")
    print("\nnext: python sample.py --checkpoint <out>/last --n 10   (see README)")


if __name__ == "__main__":
    main()
