"""Checkpoint I/O: HF BERT/RoFormer directories through an explicit key table, and our own format.

Our checkpoint directory: config.json ({"univae": {...}}), model.safetensors, vocab.txt,
tokenizer_config.json, and prior.safetensors when the model has a fitted prior (univae.density).
This module reads and writes those files; it does not know the model classes, which build
themselves from what it reads (UniVAE.from_pretrained, Transformer.from_pretrained).
Every file is written to a temporary name and moved into place with os.replace, so a crash
mid-save never leaves a half-written file under the real name. Nothing here
unpickles code: weights come from safetensors, or torch.load(weights_only=True) for .bin files.
"""

import json
import os
import re
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from univae.config import HF_KEYS, UniVAEConfig, from_hf_config
from univae.tokenizer import load_tokenizer, save_tokenizer

# HF key (after the "bert."/"roformer." prefix is stripped) -> our Transformer key.
# "{}" is the layer index. A (key, part) target is one third of the fused QKV projection.
# None drops the key on purpose, with the reason beside it.
HF_KEY_TABLE = {
    "embeddings.word_embeddings.weight": "embed.word.weight",
    "embeddings.position_embeddings.weight": "embed.position.weight",
    "embeddings.token_type_embeddings.weight": "embed.token_type.weight",
    "embeddings.LayerNorm.weight": "embed.norm.weight",
    "embeddings.LayerNorm.bias": "embed.norm.bias",
    "embeddings_project.weight": "embed.project.weight",  # RoFormer with embedding_size < hidden_size
    "embeddings_project.bias": "embed.project.bias",
    "embeddings.position_ids": None,  # an index buffer, not a weight
    "encoder.embed_positions.weight": None,  # RoFormer's fixed sinusoid table; recomputed by rotary_tables
    "encoder.layer.{}.attention.self.query.weight": ("layers.{}.qkv.weight", 0),
    "encoder.layer.{}.attention.self.key.weight": ("layers.{}.qkv.weight", 1),
    "encoder.layer.{}.attention.self.value.weight": ("layers.{}.qkv.weight", 2),
    "encoder.layer.{}.attention.self.query.bias": ("layers.{}.qkv.bias", 0),
    "encoder.layer.{}.attention.self.key.bias": ("layers.{}.qkv.bias", 1),
    "encoder.layer.{}.attention.self.value.bias": ("layers.{}.qkv.bias", 2),
    "encoder.layer.{}.attention.output.dense.weight": "layers.{}.attn_out.weight",
    "encoder.layer.{}.attention.output.dense.bias": "layers.{}.attn_out.bias",
    "encoder.layer.{}.attention.output.LayerNorm.weight": "layers.{}.attn_norm.weight",
    "encoder.layer.{}.attention.output.LayerNorm.bias": "layers.{}.attn_norm.bias",
    "encoder.layer.{}.intermediate.dense.weight": "layers.{}.ffn_in.weight",
    "encoder.layer.{}.intermediate.dense.bias": "layers.{}.ffn_in.bias",
    "encoder.layer.{}.output.dense.weight": "layers.{}.ffn_out.weight",
    "encoder.layer.{}.output.dense.bias": "layers.{}.ffn_out.bias",
    "encoder.layer.{}.output.LayerNorm.weight": "layers.{}.ffn_norm.weight",
    "encoder.layer.{}.output.LayerNorm.bias": "layers.{}.ffn_norm.bias",
    "pooler.dense.weight": None,  # the NSP pooler is not part of UniVAE
    "pooler.dense.bias": None,
    "cls.predictions.transform.dense.weight": "head.dense.weight",
    "cls.predictions.transform.dense.bias": "head.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "head.norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "head.norm.bias",
    "cls.predictions.bias": "head.bias",
    "cls.predictions.decoder.bias": "head.bias",  # older checkpoints store the tied bias twice
    "cls.predictions.decoder.weight": None,  # tied to the word embeddings
    "cls.seq_relationship.weight": None,  # next-sentence prediction
    "cls.seq_relationship.bias": None,
}
# Backbones shipped inside the package, named by one word (`train.py --init-from bundled`,
# `UniVAE.from_pretrained("bundled")`); each folder has a README.md saying how it was made.
BUNDLED = {"bundled": os.path.join(os.path.dirname(os.path.abspath(__file__)), "backbones", "zh-small")}


def resolve_path(path):
    """A checkpoint directory, or the name of a bundled backbone -> the directory."""
    return BUNDLED.get(path, path)


HEAD_KEYS = ("head.dense.weight", "head.dense.bias", "head.norm.weight", "head.norm.bias", "head.bias")


def _table_regex():
    return [(re.compile("^" + re.escape(k).replace(r"\{\}", r"(\d+)") + "$"), v) for k, v in HF_KEY_TABLE.items()]


def _hf_name(key):
    """Strip the model-class prefix and TF-era LayerNorm names (gamma/beta)."""
    for prefix in ("bert.", "roformer."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))


def read_hf_weights(directory):
    """model.safetensors or pytorch_model.bin (loaded with weights_only=True) -> state dict."""
    st, bin_ = os.path.join(directory, "model.safetensors"), os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(st):
        return read_safetensors(st)
    if os.path.exists(bin_):
        return torch.load(bin_, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")


def convert_hf_state_dict(hf_sd, transformer):
    """Map a HF BERT/RoFormer state dict onto our Transformer's keys through HF_KEY_TABLE.

    Every HF key must match a table row (consumed or dropped on purpose), every target shape must
    match, and every backbone weight must be filled. Returns (state_dict, has_head): without an MLM
    head in the checkpoint the head keeps its fresh init, and its decoder is the (tied) embedding.
    """
    ours = transformer.state_dict()
    table = _table_regex()
    out, qkv_parts = {}, {}
    unknown = []
    for key, tensor in hf_sd.items():
        name = _hf_name(key)
        for regex, target in table:
            m = regex.match(name)
            if m:
                break
        else:
            unknown.append(key)
            continue
        if target is None:
            continue
        if isinstance(target, tuple):
            target, part = target[0].format(*m.groups()), target[1]
            qkv_parts.setdefault(target, {})[part] = tensor
            continue
        target = target.format(*m.groups())
        if target not in ours:
            raise ValueError(f"checkpoint key {key} maps to {target}, which this config does not have")
        if target in out and not torch.equal(out[target], tensor):
            raise ValueError(f"checkpoint keys disagree on {target} ({key})")
        out[target] = tensor
    if unknown:
        raise ValueError(
            f"checkpoint has keys the BERT/RoFormer table does not know: {', '.join(unknown[:5])}"
            + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        )
    for target, parts in qkv_parts.items():
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f"checkpoint is missing query/key/value parts of {target}")
        out[target] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    for k, v in out.items():
        if k not in ours:
            raise ValueError(f"checkpoint maps to {k}, which this config does not have")
        if v.shape != ours[k].shape:
            raise ValueError(f"shape mismatch for {k}: checkpoint {tuple(v.shape)}, config {tuple(ours[k].shape)}")
        out[k] = v.to(ours[k].dtype)
    has_head = all(k in out for k in HEAD_KEYS)
    missing = [k for k in ours if k not in out and not (k.startswith("head.") and not has_head)]
    if missing:
        raise ValueError(
            f"checkpoint is missing weights for: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    if not has_head:
        for k in HEAD_KEYS:
            out.pop(k, None)
    return out, has_head


def read_config(directory):
    directory = resolve_path(directory)
    path = os.path.join(directory, "config.json")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: not a directory")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: no config.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # truncated, or not text at all
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def read_safetensors(path):
    """A safetensors file -> state dict; a truncated or corrupt file is a ValueError naming it."""
    try:
        return load_file(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError/ValueError) on bad bytes
        raise ValueError(f"{path}: truncated or corrupt ({str(e).splitlines()[0][:120]})") from None


def _check_vocab(config, tokenizer, directory):
    n = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1  # ids are line numbers of vocab.txt
    if n != config.vocab_size:
        raise ValueError(f"{directory}: vocab.txt has {n} tokens but config.json says vocab_size={config.vocab_size}")


def read_hf_backbone(path, **overrides):
    """A HF BERT/RoFormer directory (or a bundled backbone's name) -> (UniVAEConfig, its state dict
    under transformers' names). The caller maps the weights onto its model (convert_hf_state_dict)."""
    path = resolve_path(path)
    return from_hf_config(read_config(path), **overrides), read_hf_weights(path)


# Fields a user may change when loading a trained univae checkpoint; the rest fix the architecture.
RUNTIME_FIELDS = ("attn", "hidden_dropout_prob", "attention_probs_dropout_prob")


@dataclass
class Checkpoint:
    """What a checkpoint directory holds, read and checked, before any model is built."""

    path: str
    config: UniVAEConfig
    tokenizer: object
    state_dict: dict  # ours for a univae checkpoint; transformers' names for a HF backbone
    is_univae: bool  # False: a HF BERT/RoFormer directory (the latent heads start fresh)


def read_checkpoint(path, **overrides):
    """A univae checkpoint directory, a HF BERT/RoFormer directory or a bundled backbone's name ->
    Checkpoint. Every problem is a FileNotFoundError or ValueError naming the file."""
    path = resolve_path(path)
    raw = read_config(path)
    tokenizer = load_tokenizer(path) if os.path.exists(os.path.join(path, "vocab.txt")) else None
    if "univae" not in raw:
        config = from_hf_config(raw, **overrides)
        if tokenizer is None:
            raise FileNotFoundError(f"{path}: no vocab.txt")
        _check_vocab(config, tokenizer, path)
        return Checkpoint(path, config, tokenizer, read_hf_weights(path), is_univae=False)
    saved = raw["univae"]
    clash = {k: v for k, v in overrides.items() if k not in RUNTIME_FIELDS and k in saved and saved[k] != v}
    if clash:
        k, v = next(iter(clash.items()))
        raise ValueError(f"{path}: the checkpoint fixes {k}={saved[k]!r}; cannot override it with {v!r}")
    try:
        config = UniVAEConfig.from_dict(saved, **overrides)
    except (TypeError, AttributeError) as e:  # a hand-edited or damaged config.json: wrong types
        raise ValueError(f"{os.path.join(path, 'config.json')}: bad univae config ({e})") from None
    if tokenizer is None:
        raise FileNotFoundError(f"{path}: no vocab.txt")
    _check_vocab(config, tokenizer, path)
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
        raise FileNotFoundError(f"{path}: no model.safetensors")
    return Checkpoint(path, config, tokenizer, read_safetensors(weights), is_univae=True)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: its message is one line naming the path and the problem."""


def check_trained(path):
    """Refuse, with one line (CheckpointError), a path that is not a trained univae checkpoint."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}: train one with `python train.py` (or pass --checkpoint DIR)")
    try:
        is_univae = "univae" in read_config(path)
    except FileNotFoundError:
        is_univae = False
    except ValueError as e:  # truncated or corrupt config.json, named
        raise CheckpointError(f"cannot load checkpoint: {e}") from None
    if not is_univae:
        raise CheckpointError(f'{path} is not a univae checkpoint (no config.json with a "univae" section)')


def write_atomically(path, write):
    """write(tmp) then os.replace(tmp, path): a crash leaves the old file or none, never half of one."""
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def _write_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)


def save_univae(config, state_dict, tokenizer, directory):
    """config.json ({"univae": ...}), model.safetensors and the tokenizer files, each written atomically."""
    os.makedirs(directory, exist_ok=True)
    write_atomically(os.path.join(directory, "config.json"), lambda p: _write_json({"univae": config.to_dict()}, p))
    sd = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    write_atomically(
        os.path.join(directory, "model.safetensors"), lambda p: save_file(sd, p, metadata={"format": "pt"})
    )
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)


# ----------------------------------------------------------------------------- writing HF directories

HF_ARCHITECTURES = {"bert": "BertForMaskedLM", "roformer": "RoFormerForMaskedLM"}
_BERT_ONLY_ABSENT = ("embedding_size", "rotary_value")  # RoFormerConfig fields BertConfig does not have


def hf_config_dict(config):
    """The config.json transformers' BertForMaskedLM / RoFormerForMaskedLM reads for this backbone."""
    d = {k: getattr(config, k) for k in HF_KEYS}
    if config.model_type == "bert":
        for k in _BERT_ONLY_ABSENT:
            d.pop(k)
        d["position_embedding_type"] = "absolute"
    return {"architectures": [HF_ARCHITECTURES[config.model_type]], "model_type": config.model_type, **d}


def to_hf_state_dict(transformer):
    """Our Transformer's weights under transformers' names: HF_KEY_TABLE read backwards.

    The fused QKV projection is cut into query/key/value; the MLM decoder is left out because
    transformers ties it to the word embeddings. Every weight of ours is written exactly once."""
    c = transformer.config
    ours = transformer.state_dict()
    out, used = {}, set()
    for hf_key, target in HF_KEY_TABLE.items():
        if target is None or hf_key == "cls.predictions.decoder.bias":  # dropped, or the tied copy of the head bias
            continue
        name, part = target if isinstance(target, tuple) else (target, None)
        full = hf_key if hf_key.startswith("cls.") else f"{c.model_type}.{hf_key}"
        for i in range(c.num_hidden_layers) if "{}" in hf_key else [None]:
            key = name.format(i) if i is not None else name
            if key not in ours:  # embed.position (RoFormer), embed.project (BERT)
                continue
            tensor = ours[key] if part is None else ours[key].chunk(3, dim=0)[part]
            out[full.format(i) if i is not None else full] = tensor.detach().contiguous().cpu()
            used.add(key)
    left = sorted(set(ours) - used)
    if left:
        raise ValueError(f"to_hf_state_dict: no transformers name for {', '.join(left[:5])}")
    return out


def save_hf_backbone(transformer, tokenizer, directory, dtype=torch.float32):
    """A standard transformers directory (config.json, model.safetensors, vocab.txt,
    tokenizer_config.json) that BertForMaskedLM / RoFormerForMaskedLM and AutoTokenizer load, and
    that `train.py --init-from` fine-tunes. Each file is written atomically."""
    os.makedirs(directory, exist_ok=True)
    config = {**hf_config_dict(transformer.config), "torch_dtype": str(dtype).removeprefix("torch.")}
    write_atomically(os.path.join(directory, "config.json"), lambda p: _write_json(config, p))
    sd = {k: v.to(dtype) for k, v in to_hf_state_dict(transformer).items()}
    write_atomically(
        os.path.join(directory, "model.safetensors"), lambda p: save_file(sd, p, metadata={"format": "pt"})
    )
    save_tokenizer(tokenizer, directory)
