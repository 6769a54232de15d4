"""train.py's settings: its flags, and the run's TrainConfig and VAE fields resolved from the flags
given, the measured recipes and a resumed run's saved arguments (`resolve`, a pure function that
reads no file), plus the checks that must fail before any data is read.
"""

import argparse
import dataclasses
import os

from univae import training
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


def add_train_flags(parser):
    """Every train.py flag: TrainConfig's fields, then the VAE fields of MODEL_FLAGS (None when not given)."""
    add_config_flags(parser, TrainConfig)
    for name, (kind, help_) in MODEL_FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_)


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


def resolve(given, saved_args=None):
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
