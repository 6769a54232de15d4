"""Train a UniVAE.

    python train.py                                   # small preset, from scratch, bundled reviews, ~8 min
    python train.py --init-from DIR --corpus my.txt   # fine-tune a local HF BERT/RoFormer (reference settings)
    python train.py --resume                          # continue OUT/last exactly
    torchrun --nproc-per-node 2 train.py ...          # DistributedDataParallel, one data shard per rank

Flags come from univae.config (TrainConfig, and UniVAEConfig for the VAE fields), so a flag and a
field never disagree.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from univae import data as D
from univae.checkpoint import read_config
from univae.config import PRESET_TRAINING, PRESETS, TrainConfig, from_hf_config, preset
from univae.diagnostics import collapse_warning
from univae.model import UniVAE
from univae.objective import VAEObjective
from univae.tokenizer import build_tokenizer, char_vocab, encode_texts
from univae.training import evaluate, load_training_state, lr_at, param_groups, save_checkpoint

# VAE fields a user may set on top of a preset or an --init-from checkpoint (UniVAEConfig names).
MODEL_FLAGS = {
    "maxlen": (int, "tokens per half, [CLS] and [SEP] included (reference: 32)"),
    "num_latent_layers": (int, "top layers that carry a latent (reference: 4)"),
    "z_dim": (int, "latent dims per latent layer (reference: 16)"),
    "latent": (str, "latent family: vmf (fixed kappa, constant KL), gaussian (learned variance, KL to N(0, I)), "
                    "vq (a codebook per latent layer: discrete codes) or gmm (Gaussian-mixture prior, DEM-VAE)"),
    "kappa": (float, "vMF concentration (reference: 32)"),
    "codebook_size": (int, "vq: codes per latent layer (default 512)"),
    "vq_distance": (str, "vq: nearest code by l2 or cosine (default l2)"),
    "vq_beta": (float, "vq: commitment loss weight (default 0.25)"),
    "vq_decay": (float, "vq: EMA decay of the codebook (default 0.99)"),
    "vq_dead_steps": (int, "vq: re-seed a code from the batch after this many training steps unused (default 100; 0: never)"),
    "mixture_components": (int, "gmm: mixture components per latent layer (default 5)"),
    "attn": (str, "attention backend: auto, eager, sdpa, flex"),
}
# Model flags that mean something for one latent family only: given with another, they are an error.
FAMILY_FLAGS = {"codebook_size": "vq", "vq_distance": "vq", "vq_beta": "vq", "vq_decay": "vq", "vq_dead_steps": "vq",
                "mixture_components": "gmm"}
DEFAULT_TIME_BUDGET = 480.0  # seconds of training when no stopping flag is given: the default run ends within 10 min
BUCKET = 16  # length-sort within groups of 16 batches, then trim each batch (see trim_length)


def trim_length(longest, maxlen, multiple=8):
    """Half length for a batch whose longest sentence has `longest` tokens: rounded up to a
    multiple of 8 so that torch.compile sees at most maxlen/8 shapes. Exact: the model keeps
    target positions at maxlen + t (UniVAE.forward)."""
    return min(maxlen, -(-longest // multiple) * multiple)  # seconds; used when no stopping flag is given (the default run must end in 10 min)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            p.add_argument(flag, action="store_true", default=None, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            p.add_argument(flag, type=kind, default=None, help=f"{f.metadata['help']} (default: {f.default!r})")
    for name, (kind, help_) in MODEL_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_)
    p.add_argument("--resume", nargs="?", const="last", default=None,
                   help="continue from OUT/last (bare flag) or from the given checkpoint directory")
    args = p.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    return given, not argv


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def setup_distributed():
    """torchrun sets RANK/WORLD_SIZE; gloo on CPU, nccl on CUDA. Returns (rank, world_size, local_rank)."""
    if "RANK" not in os.environ:
        return 0, 1, 0
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank, world, local


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    given, default_run = parse_args(argv)
    rank, world, local_rank = setup_distributed()
    master = rank == 0
    log = (lambda *a: print(*a, flush=True)) if master else (lambda *a: None)

    # ------------------------------------------------------------------ settle every setting before touching --out
    resume_dir = None
    saved_args = {}
    if "resume" in given:
        out = given.get("out", TrainConfig.out)
        resume_dir = os.path.join(out, "last") if given["resume"] == "last" else given["resume"]
        if not os.path.isdir(resume_dir):
            fail(f"--resume: no checkpoint at {resume_dir} (nothing to resume)")
        try:
            state, saved_args = load_training_state(resume_dir)
        except (FileNotFoundError, ValueError) as e:
            fail(f"--resume: {e}")
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    recipe = {} if ("resume" in given or given.get("init_from")) else PRESET_TRAINING.get(given.get("preset", TrainConfig.preset), {})
    merged = {**recipe, **{k: v for k, v in saved_args.items() if k in train_fields},
              **{k: v for k, v in given.items() if k in train_fields}}
    if not any(merged.get(k) for k in ("max_steps", "epochs", "time_budget")):
        merged["time_budget"] = DEFAULT_TIME_BUDGET
    try:
        cfg = TrainConfig(**merged)
    except (TypeError, ValueError) as e:
        fail(str(e))
    model_overrides = {k: v for k, v in given.items() if k in MODEL_FLAGS}
    latent = model_overrides.get("latent", "vmf")
    for name, family in FAMILY_FLAGS.items():  # (a resumed run keeps its checkpoint's model fields anyway)
        if name in model_overrides and latent != family and not resume_dir:
            fail(f"--{name.replace('_', '-')} is for --latent {family}, not --latent {latent}")

    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            fail(f"--device {cfg.device}: CUDA is not available on this machine")
    if cfg.precision == "fp16" and device.type != "cuda":
        fail("--precision fp16 needs CUDA; use bf16 or fp32 on CPU")
    if cfg.init_from and "preset" in given:
        fail(f"--preset {given['preset']} contradicts --init-from {cfg.init_from}: the checkpoint fixes the architecture")
    if cfg.preset not in PRESETS:
        fail(f"unknown --preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")

    # the config, before any data work, so that bad flags fail fast. With --init-from the VAE
    # fields default to UniVAEConfig's, which are the reference script's settings (from_hf_config).
    try:
        if resume_dir:
            maxlen = read_config(resume_dir)["univae"]["maxlen"]
        elif cfg.init_from:
            raw = read_config(cfg.init_from)
            if "univae" in raw:
                fail(f"--init-from {cfg.init_from} is a univae checkpoint; use --resume to continue training it")
            maxlen = from_hf_config(raw, **model_overrides).maxlen
        else:
            maxlen = preset(cfg.preset, **model_overrides).maxlen
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))

    out = cfg.out
    resuming_in_place = bool(resume_dir) and os.path.realpath(out) == os.path.dirname(os.path.realpath(resume_dir))
    replace_out = master and not resuming_in_place and os.path.isdir(out) and bool(os.listdir(out))
    if replace_out and not (cfg.overwrite or default_run):
        fail(f"--out {out} is not empty; pass --resume to continue it or --overwrite to replace it")

    # ------------------------------------------------------------------ data
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    try:
        sentences, stats = D.load_sentences(cfg.corpus, limit=maxlen - 2, text_field=cfg.text_field, strict=cfg.strict)
        if cfg.val:
            val_sentences, _ = D.load_sentences(cfg.val, limit=maxlen - 2, text_field=cfg.text_field, strict=cfg.strict)
            splits = D.split(sentences, seed=cfg.split_seed, val_fraction=0.0)
            splits["val"] = val_sentences
        else:
            splits = D.split(sentences, seed=cfg.split_seed)
    except ValueError as e:  # CorpusError is a ValueError
        fail(str(e))
    log(f"corpus {cfg.corpus}: {stats['lines']} lines, {stats['sentences']} sentences "
        f"({stats['duplicates']} duplicates dropped, {stats['skipped']} bad lines skipped) -> "
        f"train {len(splits['train'])} / val {len(splits['val'])} / test {len(splits['test'])}")
    for message in stats["problems"]:
        log(f"  skipped {message}")

    # ------------------------------------------------------------------ model and tokenizer
    try:
        if resume_dir:
            model = UniVAE.from_pretrained(resume_dir, **{k: v for k, v in model_overrides.items() if k == "attn"})
        elif cfg.init_from:
            model = UniVAE.from_pretrained(cfg.init_from, **model_overrides)
        else:
            vocab = char_vocab(splits["train"], min_count=cfg.min_char_count)
            tokenizer = build_tokenizer(vocab)
            tokenizer.do_lower_case = True
            config = preset(cfg.preset, **{**model_overrides, "vocab_size": len(vocab)})
            model = UniVAE(config, tokenizer)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    c = model.config
    tok = model.tokenizer
    train_ids, n_trunc, n_unk = encode_texts(tok, splits["train"], c.maxlen, warn=False)
    val_ids, _, n_unk_val = encode_texts(tok, splits["val"], c.maxlen, warn=False)
    log(f"model: {c.model_type} {c.num_hidden_layers}x{c.hidden_size}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
        f"vocab {c.vocab_size}, maxlen {c.maxlen}, latent {c.latent} {c.num_latent_layers}x{c.z_dim}"
        + (f" kappa {c.kappa:g}" if c.latent == "vmf" else "")
        + (f" codebook {c.codebook_size} ({c.vq_distance})" if c.latent == "vq" else "")
        + (f" {c.mixture_components} components" if c.latent == "gmm" else "")
        + f"; {n_unk} train / {n_unk_val} val tokens are [UNK], {n_trunc} train sentences truncated "
        f"({time.time() - t0:.1f}s)")
    model.to(device).train()
    try:  # the loss: KL weight and schedule, free bits, MDR, BoW heads (univae/objective.py)
        objective = VAEObjective(cfg, model).to(device)
        if cfg.word_dropout:
            model.mask_token_id()
    except ValueError as e:
        fail(str(e))
    extra_params = list(objective.parameters())  # the BoW heads, if any: trained with the model

    # ------------------------------------------------------------------ optimiser, batches, state
    lr = cfg.lr or (2e-5 if cfg.init_from else 1e-3)
    groups = param_groups(model, cfg.weight_decay) + (param_groups(objective, cfg.weight_decay) if extra_params else [])
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=device.type == "cuda")
    batches = D.Batches(train_ids, cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world, bucket=BUCKET,
                        pad_id=c.pad_token_id)
    step, elapsed_before = 0, 0.0
    if resume_dir:
        try:  # a run resumed with other --bow-weight / --target-rate has other optimiser groups and state
            objective.load_state_dict(state.get("objective", {}))
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as e:
            fail(f"--resume: the checkpoint was trained with another --bow-weight or --target-rate "
                 f"({str(e).splitlines()[0]}); resume with the flags it was trained with")
        batches.load_state_dict(state["data"])
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
        torch.set_rng_state(state["rng"]["cpu"][rank] if state["rng"]["cpu"].dim() > 1 else state["rng"]["cpu"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        log(f"resumed from {resume_dir} at step {step}")
    max_steps = cfg.max_steps or math.inf
    if cfg.epochs:
        max_steps = min(max_steps, math.ceil(cfg.epochs * batches.steps_per_epoch))
    if master:
        if replace_out:
            log(f"replacing {out}/" + (" (the default run always starts afresh)" if default_run else ""))
            shutil.rmtree(out)
        os.makedirs(out, exist_ok=True)
    run_args = {**dataclasses.asdict(cfg), "lr": lr, "resume": None, "world_size": world}

    net = model
    if cfg.compile:
        net = torch.compile(model, dynamic=False)  # trim_length gives <= maxlen/8 static shapes; dynamic shapes crash Inductor with attn=eager (torch 2.13)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")

    stop_signal = []

    def on_signal(signum, frame):
        stop_signal.append(signum)
        signal.signal(signum, signal.SIG_DFL)  # a second signal kills at once

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def training_state():
        rng = torch.get_rng_state()
        if world > 1:  # every rank's dropout/latent stream, so a resumed DDP run continues exactly
            gathered = [torch.empty_like(rng) for _ in range(world)]
            dist.all_gather(gathered, rng)
            rng = torch.stack(gathered)
        s = {"step": step, "elapsed": elapsed, "optimizer": optimizer.state_dict(), "data": batches.state_dict(),
             "rng": {"cpu": rng}}
        if objective.state_dict():  # BoW heads, MDR multiplier
            s["objective"] = objective.state_dict()
        if device.type == "cuda":
            s["rng"]["cuda"] = torch.cuda.get_rng_state(device)
        return s

    def save():
        state = training_state()
        if master:
            path = save_checkpoint(out, step, model, state, run_args)
            log(f"saved {path}")
        if world > 1:
            dist.barrier()

    metrics_file = open(os.path.join(out, "metrics.jsonl"), "a", encoding="utf-8") if master else None
    writer = None
    if master:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(out, "tensorboard"))
        except ImportError:
            pass

    def record(row):
        if master:
            metrics_file.write(json.dumps(row, ensure_ascii=False) + "\n")
            metrics_file.flush()
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "step":
                        writer.add_scalar(f"{row.get('split', 'train')}/{k}", v, row["step"])

    def run_eval():
        if master:
            metrics, pairs = evaluate(model, val_ids, splits["val"], cfg.eval_sentences, autocast=autocast,
                                      au_delta=cfg.au_delta)
            record({"step": step, "split": "val", **metrics})
            log(f"step {step} val: ce {metrics['ce']:.3f}, bits/char {metrics['bits_per_char']:.3f}, kl {metrics['kl']:.2f}"
                + (f", mi {metrics['mi']:.2f}, au {metrics['au']}/{c.latent_dim}" if "au" in metrics else "")
                + (f", exact {metrics['exact_match']:.3f}, char-F1 {metrics['char_f1']:.3f}" if "char_f1" in metrics else "")
                + (", codebook perplexity " + "/".join(f"{p:.1f}" for p in metrics["codebook"]["perplexity"])
                   + ", used " + "/".join(f"{u:.2f}" for u in metrics["codebook"]["used_fraction"]) if "codebook" in metrics else "")
                + (", component entropy " + "/".join(f"{h:.2f}" for h in metrics["mixture"]["usage_entropy"])
                   + ", I(x;c) " + "/".join(f"{i:.2f}" for i in metrics["mixture"]["mi_c"]) if "mixture" in metrics else ""))
            warning = collapse_warning(metrics, c, cfg.au_delta)
            if warning:
                log(warning)
        if world > 1:
            dist.barrier()

    # ------------------------------------------------------------------ the loop
    budget = cfg.time_budget or math.inf
    t_start = time.time()
    elapsed = elapsed_before
    bar = tqdm(total=None if max_steps == math.inf else max_steps, initial=step, disable=not master,
               desc="train", dynamic_ncols=True, file=sys.stderr)
    tokens_since, t_log = 0, time.time()
    log(f"training on {device} ({cfg.precision}, attn {model.backend(device)}) "
        + (f"for at most {budget:.0f}s" if budget < math.inf else "") + (f" / {max_steps} steps" if max_steps < math.inf else ""))
    while step < max_steps:
        elapsed = elapsed_before + time.time() - t_start
        stop = elapsed >= budget or bool(stop_signal)
        if world > 1:  # every rank stops at the same step
            flag = torch.tensor(float(stop))
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if stop:
            break
        progress = max(step / max_steps if max_steps < math.inf else 0.0, elapsed / budget if budget < math.inf else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, progress, lr, cfg.warmup)
        src = batches.next_batch()
        real = src.ne(c.pad_token_id)  # on the CPU copy: no device sync
        tokens_since += int(real.sum()) * 2 * world
        src = src[:, :trim_length(int(real.sum(1).max()), c.maxlen)].to(device, non_blocking=True)
        input_ids, token_type_ids = D.join(src)
        with autocast:
            out_ = net(input_ids, token_type_ids, word_dropout=cfg.word_dropout)
            loss, logs = objective(out_, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if world > 1:  # DDP averages the model's gradients; the objective's BoW heads are outside it
            for p_ in extra_params:
                dist.all_reduce(p_.grad)
                p_.grad /= world
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([*model.parameters(), *extra_params], cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        objective.update_multiplier(out_.kl)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0:
            now = time.time()
            row = {"step": step, **{k: float(v) for k, v in logs.items()},
                   "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": tokens_since / (now - t_log)}
            record(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", kl=f"{row['kl']:.1f}", tok_s=f"{row['tokens_per_s']:.0f}")
            tokens_since, t_log = 0, now
        if step % cfg.eval_every == 0:
            run_eval()
        if step % cfg.save_every == 0:
            save()
    bar.close()
    elapsed = elapsed_before + time.time() - t_start
    why = "signal" if stop_signal else ("time budget" if elapsed >= budget else "max steps")
    log(f"stopped at step {step} ({why}, {elapsed:.0f}s of training)")

    # ------------------------------------------------------------------ final eval, save, show
    save()
    if step % cfg.eval_every or step == 0:
        run_eval()
    if master and not stop_signal:
        show(model, splits["val"])
    if metrics_file:
        metrics_file.close()
    if writer is not None:
        writer.close()
    if world > 1:
        dist.destroy_process_group()
    if stop_signal:
        sys.exit(128 + stop_signal[0])


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
    vq = model.config.latent == "vq"  # vq edits whole codes: --replace-dims counts code positions
    k = 1 if vq else model.config.z_dim
    dims = f"0:{2 * k}" if model.config.num_latent_layers > 2 else f"0:{k}"
    print(f"\nedit: replace {'code positions' if vq else 'latent dims'} {dims} (lowest latent layers) of \"{texts[0]}\":")
    for s in model.edit(texts[0], dims, n=3):
        print(f"  {s}")
    print(f"\nnext: python sample.py --checkpoint <out>/last --n 10   (see README)")


if __name__ == "__main__":
    main()
