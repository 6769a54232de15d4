"""The masked-LM pretraining loop that `python -m univae.pretrain` runs: each corpus's train part
(split as train.py splits it), BERT masking in both slots, the held-out evaluation, and a
resumable Pretrainer whose checkpoints are transformers directories (Backbone)."""

import dataclasses
import math
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from univae import data, rundir, training
from univae.checkpoint import save_hf_backbone
from univae.mlm import mask_tokens, mlm_logits, mlm_loss
from univae.tokenizer import CLS, MASK, PAD, SEP

MIN_SENTENCES = 100  # fewer training sentences than this cannot teach a vocab and a language model


# ---------------------------------------------------------------------------------------------- data


def load_corpora(cfg, log):
    """The train and val parts of each corpus, split as train.py splits it -> (train, val) lists."""
    train, val = [], []
    for spec in [s.strip() for s in cfg.corpus.split(",") if s.strip()]:
        sentences, stats = data.load_sentences(spec, limit=cfg.maxlen - 2, text_field=cfg.text_field)
        if len(sentences) < 3:
            raise data.CorpusError(
                f"{spec}: {len(sentences)} sentence(s); a corpus needs at least 3 (train, val, test)"
            )
        splits = data.split(sentences, seed=cfg.split_seed)
        train += splits["train"]
        val += splits["val"]
        log(
            f"corpus {spec}: {stats['sentences']} sentences -> train {len(splits['train'])} "
            f"(used) / val {len(splits['val'])} (held out) / test {len(splits['test'])} (held out)"
        )
    if len(train) < MIN_SENTENCES:
        raise data.CorpusError(
            f"--corpus {cfg.corpus}: {len(train)} training sentences; masked-LM pretraining "
            f"needs at least {MIN_SENTENCES}"
        )
    return train, val


def mlm_batch(ids, tokenizer, vocab_size, rate):
    specials = [tokenizer.token_to_id(t) for t in (PAD, CLS, SEP)]
    return mask_tokens(ids, tokenizer.token_to_id(MASK), vocab_size, specials, rate=rate)


@torch.no_grad()
def evaluate_mlm(transformer, tokenizer, ids, rate, autocast, batch_size=256, seed=1234):
    """Held-out masked-LM CE and accuracy, both slots, the same masks every call (a fixed seed, the
    global RNG restored after)."""
    was_training = transformer.training
    transformer.eval()
    ce_sum = correct = n = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            chunk = chunk[:, : int(chunk.ne(transformer.config.pad_token_id).sum(1).max())]
            inputs, labels = mlm_batch(chunk, tokenizer, transformer.config.vocab_size, rate)
            for target_slot in (False, True):
                with autocast:
                    logits, targets = mlm_logits(
                        transformer, inputs, labels, transformer.config.pad_token_id, target_slot=target_slot
                    )
                ce_sum += F.cross_entropy(logits, targets, reduction="sum").item()
                correct += (logits.argmax(-1) == targets).sum().item()
                n += len(targets)
    transformer.train(was_training)
    return {"mlm_ce": ce_sum / max(n, 1), "mlm_accuracy": correct / max(n, 1), "masked_tokens": n}


# ---------------------------------------------------------------------------------------------- the loop


class Backbone:
    """What a pretraining checkpoint saves: the Transformer and its tokenizer as a transformers
    directory (the `save_pretrained` that rundir.Checkpointer calls)."""

    def __init__(self, transformer, tokenizer, dtype=torch.float32):
        self.transformer, self.tokenizer, self.dtype = transformer, tokenizer, dtype

    def save_pretrained(self, directory):
        save_hf_backbone(self.transformer, self.tokenizer, directory, dtype=self.dtype)


class Pretrainer:
    """The masked-LM loop: `step`, `evaluate`, `save`, `fit`; resumable from any step-N."""

    def __init__(self, cfg, transformer, tokenizer, train_ids, val_ids, device, rank=0, world=1, log=print):
        self.cfg, self.transformer, self.tokenizer = cfg, transformer, tokenizer
        self.val_ids, self.device, self.rank, self.world, self.log = val_ids, device, rank, world, log
        self.master = rank == 0
        self.optimizer = torch.optim.AdamW(
            training.param_groups(transformer, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=True
        )
        self.batches = data.Batches(
            train_ids,
            cfg.batch_size,
            seed=cfg.seed,
            rank=rank,
            world_size=world,
            bucket=16,
            pad_id=transformer.config.pad_token_id,
        )
        dtype = training.autocast_dtype(cfg.precision, device)
        self.precision = training.precision_name(dtype)
        self.autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
        self.length_multiple = training.length_multiple(False, device, dtype)
        self.step, self.elapsed, self.skipped = 0, 0.0, 0
        self.max_steps = cfg.max_steps or math.inf
        self.budget = cfg.time_budget or math.inf
        self.stop_signal = []
        self.metrics_log = rundir.MetricsLog()  # main gives rank 0 the run directory's log
        self.run_args = dataclasses.asdict(cfg) | {"world_size": world}
        self.checkpointer = rundir.Checkpointer(cfg.out, self.run_args, cfg.keep_last, self.master, world, log)

    def training_state(self):
        return training.loop_state(self)

    def load_state(self, state):
        self.optimizer.load_state_dict(state["optimizer"])
        training.restore_loop_state(self, state)

    def progress(self):
        return training.run_progress(self.step, self.max_steps, self.elapsed, self.budget)

    def train_step(self):
        """One optimiser step -> the batch's masked-LM loss. A non-finite loss or gradient changes nothing."""
        cfg, c = self.cfg, self.transformer.config
        for group in self.optimizer.param_groups:
            group["lr"] = training.lr_at(self.step, self.progress(), cfg.lr, cfg.warmup)
        ids = self.batches.next_batch()
        longest = int(ids.ne(c.pad_token_id).sum(1).max())  # batches are length-bucketed: trim to the longest
        ids = ids[:, : training.trim_length(longest, ids.shape[1], self.length_multiple)]
        inputs, labels = mlm_batch(ids, self.tokenizer, c.vocab_size, cfg.mask_rate)
        with self.autocast:
            loss, _ = mlm_loss(
                self.transformer,
                inputs.to(self.device),
                labels.to(self.device),
                c.pad_token_id,
                target_slot=self.step % 2 == 1,
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            for p in self.transformer.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.transformer.parameters(), cfg.grad_clip or math.inf, foreach=True
        )
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        if self.world > 1:  # every rank skips the same steps
            finite = finite.float()
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite):
            self.optimizer.step()
        else:
            self.skipped += 1
            self.log(f"step {self.step + 1}: non-finite loss or gradient, skipped ({self.skipped} in all)")
        self.step += 1
        return loss.detach()

    def evaluate(self):
        if self.master:
            metrics = evaluate_mlm(self.transformer, self.tokenizer, self.val_ids, self.cfg.mask_rate, self.autocast)
            self.metrics_log.record({"step": self.step, "split": "val", **metrics})
            self.log(
                f"step {self.step} val: masked-LM ce {metrics['mlm_ce']:.3f}, accuracy {metrics['mlm_accuracy']:.3f}"
            )
            return metrics
        return None

    def save(self):
        if not training.all_finite(self.transformer):
            raise rundir.TrainingError(f"the weights at step {self.step} are not finite; not saved")
        state = self.training_state()  # every rank gathers its RNG state
        self.checkpointer.save(self.step, Backbone(self.transformer, self.tokenizer), state)

    def should_stop(self):
        return training.stop_everywhere(self.elapsed >= self.budget or bool(self.stop_signal), self.world)

    def fit(self):
        """Train until --max-steps, --time-budget or a signal; then save and evaluate."""
        cfg = self.cfg
        elapsed_before, t_start, t_row, tokens = self.elapsed, time.time(), time.time(), 0
        self.transformer.train()
        self.log(f"pretraining on {self.device} ({self.precision})")
        while self.step < self.max_steps:
            self.elapsed = elapsed_before + time.time() - t_start
            if self.should_stop():
                break
            loss = self.train_step()
            tokens += cfg.batch_size * self.world
            if self.step % cfg.log_every == 0:
                now = time.time()
                row = {
                    "step": self.step,
                    "mlm_ce": float(loss),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "sentences_per_s": round(tokens / (now - t_row), 1),
                    "elapsed": round(self.elapsed, 1),
                    "peak_rss_mb": round(training.peak_rss_mb()),
                }
                self.metrics_log.record(row)
                self.log(
                    f"step {self.step}  mlm ce {row['mlm_ce']:.3f}  lr {row['lr']:.2e}  "
                    f"{row['sentences_per_s']:.0f} sent/s  {self.elapsed:.0f}s"
                )
                t_row, tokens = now, 0
            if self.step % cfg.eval_every == 0:
                self.evaluate()
            if self.step % cfg.save_every == 0:
                self.save()
        self.elapsed = elapsed_before + time.time() - t_start
        self.log(f"stopped at step {self.step} ({self.elapsed:.0f}s of training)")
        self.save()
        if self.step % cfg.eval_every:  # (at a multiple the loop has just evaluated)
            self.evaluate()
