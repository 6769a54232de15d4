"""One dataclass config for the backbone and the VAE on top of it, plus named presets.

Backbone fields are named as in transformers' BertConfig/RoFormerConfig so that a HF config.json
maps onto them key for key (`from_hf_config`). The per-layer schedule (which layers carry a
latent) is expanded once in `__post_init__`.
"""

import dataclasses
import json
from dataclasses import dataclass, field


def add_config_flags(parser, config_class):
    """One --flag per field of a dataclass config (its help from the field's metadata), default None
    so that the caller sees which flags were given; bool fields are switches."""
    for f in dataclasses.fields(config_class):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool or f.type == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag, type=kind, default=None, help=f"{f.metadata['help']} (default: {f.default!r})")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="last",
        default=None,
        help="continue from OUT/last (bare flag) or from the given checkpoint directory",
    )


class SettingsError(ValueError):
    """A bad flag or combination of flags: printed as one line, exit status 2."""


LATENT_FAMILIES = ("vmf", "gaussian", "vq", "gmm")
VQ_DISTANCES = ("l2", "cosine")
ANNEAL_SCHEDULES = ("none", "linear", "cyclical")  # TrainConfig.kl_anneal
BOW_CHARS = ("all", "content", "pattern")
KL_REDUCTIONS = ("per-token", "per-sentence")  # TrainConfig.kl_reduction
ATTN_BACKENDS = ("auto", "eager", "sdpa", "flex", "split")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # TrainConfig.precision


@dataclass
class UniVAEConfig:
    # backbone (BertConfig / RoFormerConfig names)
    model_type: str = "bert"  # "bert": learned absolute positions; "roformer": interleaved rotary
    vocab_size: int = 21128
    hidden_size: int = 768
    embedding_size: int = 0  # RoFormer may embed in a smaller size and project; 0 = hidden_size
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    rotary_value: bool = False  # RoFormer option: rotate values too
    pad_token_id: int = 0
    # the VAE
    maxlen: int = 32  # tokens per half, [CLS] and [SEP] included
    num_latent_layers: int = 4  # the top n layers carry a latent on their [CLS] input
    z_dim: int = 16  # latent dims per latent layer
    latent: str = "vmf"
    kappa: float = 32.0  # vMF concentration (fixed); or a list, one per latent layer, lowest first
    codebook_size: int = 512  # vq: codes per latent layer
    vq_distance: str = "l2"  # vq: nearest code by "l2" or "cosine" (unit vectors)
    vq_beta: float = 0.25  # vq: weight of the commitment loss (VQ-VAE's beta), part of UniVAEOutput.loss
    vq_decay: float = 0.99  # vq: EMA decay of the codebook statistics
    vq_dead_steps: int = 100  # vq: a code unused this many training steps in a row is re-seeded (0: never)
    mixture_components: int = 5  # gmm: mixture components per latent layer
    attn: str = "auto"
    # derived in __post_init__ (not saved)
    latent_layers: list = field(init=False, repr=False)

    def __post_init__(self):
        if self.embedding_size == 0:
            self.embedding_size = self.hidden_size
        if self.model_type not in ("bert", "roformer"):
            raise ValueError(f"model_type must be 'bert' or 'roformer', got {self.model_type!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.model_type == "roformer" and (self.hidden_size // self.num_attention_heads) % 2:
            raise ValueError("RoFormer's rotary embedding needs an even head size")
        if self.model_type == "bert" and self.embedding_size != self.hidden_size:
            raise ValueError("BERT has no embedding projection: embedding_size must equal hidden_size")
        # The lowest layer's [CLS] input is the same embedding for every sentence: a latent there says nothing.
        if not 1 <= self.num_latent_layers <= self.num_hidden_layers - 1:
            raise ValueError(
                f"num_latent_layers must be in [1, {self.num_hidden_layers - 1}] for {self.num_hidden_layers} layers "
                f"(the lowest layer cannot carry a latent), got {self.num_latent_layers}"
            )
        if self.maxlen < 3:
            raise ValueError(f"maxlen must be at least 3 ([CLS], one token, [SEP]), got {self.maxlen}")
        if self.model_type == "bert" and 2 * self.maxlen > self.max_position_embeddings:
            raise ValueError(
                f"2*maxlen = {2 * self.maxlen} exceeds the BERT position table ({self.max_position_embeddings} positions)"
            )
        if self.z_dim < 2:
            raise ValueError(f"z_dim must be at least 2, got {self.z_dim}")
        if self.latent not in LATENT_FAMILIES:
            raise ValueError(f"latent must be one of {LATENT_FAMILIES}, got {self.latent!r}")
        if isinstance(self.kappa, (list, tuple)):
            if len(self.kappa) != self.num_latent_layers:
                raise ValueError(
                    f"kappa has {len(self.kappa)} values for {self.num_latent_layers} latent layers: "
                    f"give one, or one per latent layer, got {list(self.kappa)}"
                )
            self.kappa = [float(k) for k in self.kappa]
            if len(set(self.kappa)) == 1:
                self.kappa = self.kappa[0]
        if self.latent == "vmf" and not all(k > 0 for k in self.kappas):
            raise ValueError(f"kappa must be positive, got {self.kappa}")
        if self.latent == "vq":
            if self.codebook_size < 2:
                raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")
            if self.vq_distance not in VQ_DISTANCES:
                raise ValueError(f"vq_distance must be one of {VQ_DISTANCES}, got {self.vq_distance!r}")
            if not 0 < self.vq_decay < 1:
                raise ValueError(f"vq_decay must be in (0, 1), got {self.vq_decay}")
            if self.vq_beta < 0 or self.vq_dead_steps < 0:
                raise ValueError(
                    f"vq_beta and vq_dead_steps must not be negative, got {self.vq_beta}, {self.vq_dead_steps}"
                )
        if self.latent == "gmm" and self.mixture_components < 2:
            raise ValueError(f"mixture_components must be at least 2, got {self.mixture_components}")
        if self.attn not in ATTN_BACKENDS:
            raise ValueError(f"attn must be one of {ATTN_BACKENDS}, got {self.attn!r}")
        L, n = self.num_hidden_layers, self.num_latent_layers
        self.latent_layers = list(range(L - n, L))

    @property
    def kappas(self):
        """The vMF concentration of each latent layer, lowest first."""
        return list(self.kappa) if isinstance(self.kappa, list) else [float(self.kappa)] * self.num_latent_layers

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads

    @property
    def latent_dim(self):
        """Size of the full code z = concat(z_k, ..., z_{L-1})."""
        return self.num_latent_layers * self.z_dim

    def to_dict(self):
        d = dataclasses.asdict(self)
        d.pop("latent_layers")
        return d

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"univae": self.to_dict()}, f, indent=2)

    @classmethod
    def from_dict(cls, d, **overrides):
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**{**{k: v for k, v in d.items() if k in known}, **overrides})


# Backbone keys a HF BertConfig/RoFormerConfig must agree with; everything else there is ignored.
HF_KEYS = (
    "vocab_size",
    "hidden_size",
    "embedding_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
    "initializer_range",
    "rotary_value",
    "pad_token_id",
)


def from_hf_config(hf, **overrides):
    """A transformers config.json dict (model_type bert or roformer) -> UniVAEConfig."""
    model_type = hf.get("model_type")
    if model_type not in ("bert", "roformer"):
        raise ValueError(f"model_type {model_type!r} is not supported (need 'bert' or 'roformer')")
    if model_type == "bert" and hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"BERT position_embedding_type {hf['position_embedding_type']!r} is not supported")
    d = {k: hf[k] for k in HF_KEYS if k in hf and hf[k] is not None}
    # The reference's 4 latent layers, unless the model is too shallow for that.
    d["num_latent_layers"] = min(UniVAEConfig.num_latent_layers, d.get("num_hidden_layers", 12) - 1)
    return UniVAEConfig.from_dict({**d, "model_type": model_type}, **overrides)


PRESETS = {
    # tiny, for tests and smoke runs
    "debug": dict(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        maxlen=16,
        num_latent_layers=2,
        z_dim=8,
        kappa=16.0,
        max_position_embeddings=64,
        vocab_size=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ),
    # the from-scratch CPU recipe, `python train.py --from-scratch` (chosen by the sweep in docs/results.md)
    "small": dict(
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        maxlen=32,
        num_latent_layers=3,
        z_dim=64,
        kappa=256.0,
        max_position_embeddings=64,
        # An 8-minute CPU run sees the data about three times and val CE still falls at the end: no
        # overfitting to fight, and CPU dropout (bernoulli) cost a fifth of the step time in profiles.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ),
    # the reference: 12 x 768, 4 latent layers x 16 dims, kappa 32
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        maxlen=32,
        num_latent_layers=4,
        z_dim=16,
        kappa=32.0,
    ),
}


# Training settings measured together with a preset (docs/results.md, "The small preset"): the defaults
# of a from-scratch run of that preset, below any flag the user gives.
PRESET_TRAINING = {
    "small": dict(lr=3e-3, word_dropout=0.2, bow_weight=1.0, bow_layers="0,-1", bow_chars="content,pattern"),
}
# The default run's recipe: fine-tune the bundled backbone (`--init-from bundled`), measured in
# docs/results.md. Training settings, and the VAE fields laid on the backbone's config.
BUNDLED_TRAINING = dict(lr=2e-3, word_dropout=0.2, bow_weight=1.0, bow_layers="0,-1", bow_chars="content,pattern")
BUNDLED_MODEL = dict(num_latent_layers=3, z_dim=64, kappa=1024.0)
BOW_FLAGS = ("bow_weight", "bow_layers", "bow_chars")  # a recipe's bag of words: settings that go together


def preset(name, **overrides):
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return UniVAEConfig.from_dict({**PRESETS[name], **overrides})


@dataclass
class TrainConfig:
    """Training settings; train.py builds its flags from these fields (help text in metadata)."""

    corpus: str = field(
        default="builtin:reviews", metadata={"help": "builtin:reviews, builtin:news, or a .txt/.jsonl file"}
    )
    val: str = field(default="", metadata={"help": "validation corpus file (default: split off the training corpus)"})
    text_field: str = field(default="text", metadata={"help": "JSON field holding the sentence in .jsonl corpora"})
    strict: bool = field(default=False, metadata={"help": "fail on the first bad corpus line instead of skipping it"})
    min_char_count: int = field(
        default=1, metadata={"help": "from scratch: drop characters seen fewer times from the vocab"}
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the fixed train/val/test split"})
    init_from: str = field(
        default="bundled",
        metadata={
            "help": "local HF BERT/RoFormer directory to fine-tune, or `bundled`: the small Chinese BERT shipped with "
            "univae (made by python -m univae.pretrain on the bundled corpora's train splits)"
        },
    )
    from_scratch: bool = field(
        default=False,
        metadata={
            "help": "train a --preset from random weights instead of fine-tuning (implied by --preset or an "
            "architecture flag)"
        },
    )
    preset: str = field(
        default="small", metadata={"help": f"model size when training from scratch: {', '.join(PRESETS)}"}
    )
    batch_size: int = field(default=64, metadata={"help": "sentences per step and process"})
    lr: float = field(
        default=0.0,
        metadata={
            "help": "peak learning rate (default: the recipe's: 2e-3 from the bundled backbone, 3e-3 from scratch with the small "
            "preset, else 1e-3; 2e-5 with another --init-from)"
        },
    )
    warmup: int = field(default=200, metadata={"help": "linear warmup steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases and LayerNorms)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many steps (0: no limit)"})
    epochs: float = field(default=0.0, metadata={"help": "stop after this many passes over the data (0: no limit)"})
    time_budget: float = field(
        default=0.0, metadata={"help": "stop cleanly after this many seconds of training (0: none)"}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "clip the gradient norm to this (0: off)"})
    log_every: int = field(default=20, metadata={"help": "steps between metrics.jsonl rows"})
    eval_every: int = field(default=500, metadata={"help": "steps between evaluations"})
    save_every: int = field(default=1000, metadata={"help": "steps between step-N checkpoints"})
    eval_sentences: int = field(default=200, metadata={"help": "val sentences reconstructed greedily at each eval"})
    out: str = field(default="runs/default", metadata={"help": "output directory"})
    keep_last: int = field(
        default=3,
        metadata={
            "help": "keep only the newest N step-N checkpoints in --out, besides last (0: keep all). A base-size "
            "fine-tune writes ~600 MB per checkpoint, optimiser state included"
        },
    )
    max_bad_steps: int = field(
        default=5,
        metadata={
            "help": "stop with an error after this many non-finite steps in a row (each one is skipped: no update)"
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --out"})
    seed: int = field(default=0, metadata={"help": "seed for init, dropout, latent sampling and batch order"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})
    precision: str = field(
        default="auto",
        metadata={
            "help": "fp32, bf16 (autocast, CPU and CUDA), fp16 (CUDA) or auto: bf16 on a GPU or a CPU with hardware bf16 "
            "(AVX512-BF16, AMX), else fp32"
        },
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    prior_components: int = field(
        default=8,
        metadata={
            "help": "after training, fit a Gaussian mixture of this many components to the training codes; sampling and "
            "edits draw from it (univae/density.py; 0: none, draw from the training prior)"
        },
    )
    # the VAE objective and the remedies for posterior collapse (univae/objective.py has the formula)
    kl_weight: float = field(default=1.0, metadata={"help": "beta, the weight of the KL term (non-vMF latents)"})
    kl_reduction: str = field(
        default="per-token",
        metadata={
            "help": "per-token: the sentence KL divided by the mean number of target tokens, like the CE "
            "(beta 1 = the negative ELBO per token); per-sentence: not divided"
        },
    )
    kl_anneal: str = field(default="none", metadata={"help": "KL weight schedule: none, linear, cyclical (Optimus)"})
    kl_anneal_steps: int = field(
        default=0, metadata={"help": "steps the schedule spans, all cycles together (0: --max-steps)"}
    )
    kl_cycles: int = field(default=4, metadata={"help": "cyclical: number of cycles in --kl-anneal-steps"})
    kl_ratio_zero: float = field(default=0.5, metadata={"help": "cyclical: fraction of each cycle at weight 0"})
    kl_ratio_increase: float = field(
        default=0.25, metadata={"help": "cyclical: fraction of each cycle ramping 0 -> 1 (the rest holds 1)"}
    )
    free_bits: float = field(
        default=0.0,
        metadata={"help": "lambda nats per latent dim: the KL term becomes sum_d max(lambda, batch-mean KL_d)"},
    )
    target_rate: float = field(
        default=0.0,
        metadata={
            "help": "MDR: keep the KL per sentence (all layers) >= this many nats with a learned Lagrange multiplier (0: off)"
        },
    )
    mdr_lr: float = field(default=0.01, metadata={"help": "MDR: multiplier step per nat of rate deficit per step"})
    word_dropout: float = field(
        default=0.0,
        metadata={
            "help": "replace each decoder target input token (not the first [CLS]) by [MASK] with this probability"
        },
    )
    code_dropout: float = field(
        default=0.0,
        metadata={
            "help": "give the decoder one latent layer's code (chosen per sentence) as a training-prior draw with this probability, so each layer must mean something on its own"
        },
    )
    bow_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of the bag-of-words loss predicting the sentence's tokens from each latent layer's z (0: off; "
            "the small preset from scratch: 1, with --bow-layers 0,-1 --bow-chars content,pattern, so that the "
            "lowest latent layer carries what a sentence is about and the top one how it is said)"
        },
    )
    bow_layers: str = field(
        default="",
        metadata={
            "help": "with --bow-weight: only these latent layers' z predict the bag of words, comma-separated, 0 = the "
            "lowest latent layer, -1 the top one (default: all; the small preset from scratch: 0,-1 with --bow-chars "
            "content,pattern; given without --bow-chars, every token counts)"
        },
    )
    bow_chars: str = field(
        default="all",
        metadata={
            "help": "with --bow-weight: the bag of words holds every target token (all), only the training corpus's "
            "content characters (content: IDF above the median over occurrences, punctuation excluded, the "
            "evaluation's definition) or only the others (pattern); one class for every --bow-layers layer, "
            "or one per layer (--bow-layers 0,-1 --bow-chars content,pattern), so that a layer is made to carry "
            "what a sentence is about, or how it is said"
        },
    )
    dispersion_weight: float = field(
        default=0.2,
        metadata={
            "help": "--latent gmm: weight of DEM-VAE's dispersion term inside the KL (1 = the plain ELBO; below 1 "
            "keeps the mixture components apart; DEM-VAE's beta, 0.2 in its language-modelling runs)"
        },
    )
    mi_weight: float = field(
        default=1.0,
        metadata={
            "help": "--latent gmm: weight of I(x; c) inside KL(q(c|x) || p(c)) (1 = the plain ELBO; 0 = DEM-VAE's "
            "--use_mutual, which stops the ELBO from pushing q(c|x) towards independence of x)"
        },
    )
    au_delta: float = field(
        default=0.01, metadata={"help": "a latent dim is active when Var over val sentences of E_q[z_d] exceeds this"}
    )

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "log_every", "eval_every", "save_every", "kl_cycles", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in (
            "keep_last",
            "prior_components",
            "lr",
            "warmup",
            "max_steps",
            "epochs",
            "time_budget",
            "grad_clip",
            "weight_decay",
            "eval_sentences",
            "kl_weight",
            "kl_anneal_steps",
            "free_bits",
            "target_rate",
            "mdr_lr",
            "bow_weight",
            "dispersion_weight",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got {getattr(self, name)}")
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"--kl-reduction must be one of {', '.join(KL_REDUCTIONS)}, got {self.kl_reduction!r}")
        if self.kl_anneal not in ANNEAL_SCHEDULES:
            raise ValueError(f"--kl-anneal must be one of {', '.join(ANNEAL_SCHEDULES)}, got {self.kl_anneal!r}")
        if self.kl_anneal != "none" and not self.kl_anneal_steps:
            if not self.max_steps:
                raise ValueError(f"--kl-anneal {self.kl_anneal} needs --kl-anneal-steps (or --max-steps to span)")
            self.kl_anneal_steps = self.max_steps
        if not (0 <= self.kl_ratio_zero < 1 and 0 < self.kl_ratio_increase <= 1 - self.kl_ratio_zero):
            raise ValueError(
                f"--kl-ratio-zero {self.kl_ratio_zero} and --kl-ratio-increase {self.kl_ratio_increase} must "
                "satisfy 0 <= zero < 1 and 0 < increase <= 1 - zero (one cycle: zero, ramp, hold)"
            )
        if not 0 <= self.code_dropout < 1:
            raise ValueError(f"--code-dropout must be in [0, 1), got {self.code_dropout}")
        if not 0 <= self.word_dropout < 1:
            raise ValueError(f"--word-dropout must be in [0, 1), got {self.word_dropout}")
        if self.bow_layers and not self.bow_weight:
            raise ValueError(
                f"--bow-layers {self.bow_layers} chooses the layers of the bag-of-words loss; it needs --bow-weight > 0"
            )
        for kind in self.bow_chars.split(","):
            if kind.strip() not in BOW_CHARS:
                raise ValueError(
                    f"--bow-chars must be one of {', '.join(BOW_CHARS)} (or a comma-separated list of them, "
                    f"one per --bow-layers layer), got {kind.strip()!r} in {self.bow_chars!r}"
                )
        if self.bow_chars != "all" and not self.bow_weight:
            raise ValueError(
                f"--bow-chars {self.bow_chars} chooses the bag-of-words targets; it needs --bow-weight > 0"
            )
        if not self.au_delta > 0:
            raise ValueError(f"--au-delta must be positive, got {self.au_delta}")
