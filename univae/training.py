"""Library pieces train.py is made of: schedule, evaluation, crash-safe checkpoint directories.

Checkpoint layout under --out:

    step-N/    save_pretrained files + training_state.pt + train_args.json
    last  ->   step-N   (a symlink, swapped atomically with os.replace)

A checkpoint is written to a hidden temporary directory and renamed into place (a rename onto a
fresh name is atomic), and only then does `last` move. A kill at any moment leaves every earlier
checkpoint intact and `last` pointing at a complete one.
"""
import json
import math
import os
import shutil

import torch

from univae.data import join
from univae.diagnostics import latent_metrics, posterior_params_of
from univae.metrics import bits_per_char, reconstruction_scores

STATE_FILE = "training_state.pt"
ARGS_FILE = "train_args.json"


def lr_at(step, progress, peak, warmup):
    """Linear warmup over `warmup` steps, then cosine decay to 10% of peak as progress goes 0 -> 1.

    progress is the fraction of the run done (by steps, epochs or the time budget, whichever
    ends first), so a time-budgeted run still anneals before it stops."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0))))


def param_groups(model, weight_decay):
    """AdamW groups: decay matrices, not biases, LayerNorm weights or the latent heads' biases, nor the
    latent family's prior (gmm's component means: decay would pull the components together)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("family.") else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(model, ids, texts, n_reconstruct, batch_size=128, autocast=None, au_delta=0.01):
    """Val metrics: CE per target token, bits per char, KL (total and per layer), the collapse
    diagnostics of univae.diagnostics over all of ids (mi, mi_per_layer, au, au_per_layer, and
    kl_per_dim where the KL splits over dims), and greedy reconstruction of the first n_reconstruct
    sentences (exact match and char F1, whitespace ignored).

    Runs under fork_rng so evaluating never shifts the training RNG stream (resume stays exact)."""
    was_training = model.training
    model.eval()
    total_nats = n_tokens = 0.0
    kl_sum, kl_layers = 0.0, 0.0
    autocast = autocast or torch.autocast("cpu", enabled=False)
    with torch.random.fork_rng(devices=[] if model.device.type == "cpu" else [model.device]):
        for chunk in ids.split(batch_size):
            input_ids, token_type_ids = join(chunk.to(model.device))
            with autocast:
                out = model(input_ids, token_type_ids)
            total_nats += out.ce.item() * out.n_tokens.item()
            n_tokens += out.n_tokens.item()
            kl_sum += out.kl.item() * len(chunk)
            kl_layers = kl_layers + out.kl_per_layer.float().cpu() * len(chunk)
        latent = latent_metrics(model.family, posterior_params_of(model, ids, batch_size, autocast), au_delta)
        subset = texts[:n_reconstruct]
        preds = model.reconstruct(subset) if subset else []
    model.train(was_training)
    n_chars = sum(len("".join(t.split())) + 1 for t in texts)  # +1: the closing [SEP] is predicted too
    metrics = {
        "ce": total_nats / max(n_tokens, 1),
        "bits_per_char": bits_per_char(total_nats, n_chars),
        "kl": kl_sum / len(ids),
        "kl_per_layer": (kl_layers / len(ids)).tolist(),
        **latent,
    }
    if subset:
        metrics.update(reconstruction_scores(preds, subset))
    return metrics, list(zip(subset, preds))


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(out_dir, step, model, state, args):
    """Write OUT/step-N atomically, then point OUT/last at it. Returns the checkpoint path."""
    name = f"step-{step}"
    final = os.path.join(out_dir, name)
    if not os.path.exists(final):  # the same step saved twice (periodic + final) holds the same weights
        tmp = os.path.join(out_dir, f".tmp-{name}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        torch.save(state, os.path.join(tmp, STATE_FILE))
        with open(os.path.join(tmp, ARGS_FILE), "w", encoding="utf-8") as f:
            json.dump(args, f, indent=2, ensure_ascii=False)
        os.replace(tmp, final)
    link = os.path.join(out_dir, ".last.tmp")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(name, link)
    os.replace(link, os.path.join(out_dir, "last"))
    return final


def load_training_state(directory):
    """training_state.pt (weights_only: no pickled code runs) and train_args.json of a checkpoint."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: no {STATE_FILE} (not a training checkpoint; nothing to resume)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    with open(os.path.join(directory, ARGS_FILE), encoding="utf-8") as f:
        args = json.load(f)
    return state, args
