"""The measurements behind the evaluation report, one function per report section, each returning
its part of report.json (the keys are documented in univae/evaluate.py, which runs them in order).
"""

import math
import sys

import torch
import torch.nn.functional as F
from tqdm import tqdm

from univae import downstream, metrics
from univae.data import CorpusError, load_sentences
from univae.decoding import Decoding, decode_ids
from univae.density import SAMPLE_SPREAD
from univae.diagnostics import collapse_warning, latent_metrics
from univae.edit_dims import edit_size, parse_dims
from univae.generate import DEFAULT_STRENGTH, edit_z
from univae.rundir import ARGS_FILE, find_metrics_file, read_metrics, split_corpus
from univae.tokenizer import detokenize

SPLITS = ("train", "val", "test")


def progress(iterable, desc, total=None):
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
        disable=not sys.stderr.isatty(),
    )  # a log file or CI gets no carriage-return redraws


def chunks(xs, size):
    return [xs[i : i + size] for i in range(0, len(xs), size)]


# ----------------------------------------------------------------------------- checkpoint and data


def load_data(spec, maxlen, train_args):
    """--data -> (sentences, source description, training sentences or None, notes)."""
    notes = []
    corpus, _, split_name = spec.rpartition(":")
    if corpus and split_name in SPLITS:
        splits, seed = split_corpus(corpus, maxlen, train_args)
        texts, source = splits[split_name], f"{split_name} split (seed {seed}) of {corpus}"
        if not train_args:
            notes.append(f"no {ARGS_FILE} in the checkpoint: split seed 0 assumed")
        elif train_args.get("corpus") != corpus:
            notes.append(f"the checkpoint was trained on {train_args.get('corpus')}, not {corpus}")
    else:
        texts, _ = load_sentences(spec, limit=maxlen - 2)
        source = f"sentences of {spec} (cut to maxlen - 2 = {maxlen - 2} chars as in training)"
        splits = None
    if not texts:
        raise CorpusError(f"{spec}: no sentence to evaluate")
    train_texts = None
    if train_args and train_args.get("corpus"):
        if splits is None or train_args["corpus"] != corpus:
            splits, _ = split_corpus(train_args["corpus"], maxlen, train_args)
        train_texts = splits["train"]
    return texts, source, train_texts, notes


# ----------------------------------------------------------------------------- likelihood pieces


def has_density(model):
    """True when the IW estimate can be computed: a posterior density (family.log_q) and a prior one."""
    return hasattr(model.family, "log_q") and hasattr(model.family, "log_prior")


def sequence_log_likelihood(model, z, tgt):
    """log p(x | z) per row: tgt (B, T) target ids ([CLS] first, [PAD] after [SEP]), z (B, latent_dim).

    Summed over the real target tokens after [CLS], the closing [SEP] included, as the training CE.
    Returns (log-likelihoods (B,), token counts (B,))."""
    logits = model.decode_logits(z, tgt).float()  # (B, T, V): logits[:, t] predicts tgt[:, t + 1]
    labels = tgt[:, 1:]
    pad = model.config.pad_token_id
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=pad, reduction="none")
    return -nll.view(labels.shape).sum(1), (labels != pad).sum(1)


def trim(ids, pad):
    """Drop the columns that are padding in every row (a batch of short sentences costs less)."""
    return ids[:, : max(2, int((ids != pad).sum(1).max()))]


def importance_weighted(model, ids, n_samples):
    """Per-sentence (log p(x) estimate, ELBO estimate) for src ids (B, maxlen), both (B,) float64.

    log p(x) ≈ logsumexp_k log w_k - log K,  log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x),
    z_k ~ q(z|x) (Optimus' estimator); p(z) and q(z|x) factor over latent layers, so their logs are
    sums over layers. The ELBO estimate is mean_k log w_k on the same samples: by Jensen never above
    the log p(x) estimate, equal to it when K = 1. For gmm, z's prior is the marginal mixture (c summed
    out), so this -ELBO is at most the training one, whose KL is that of the joint (z, c)."""
    B, K = ids.shape[0], n_samples
    family = model.family
    zs, log_prior_ratio = [], 0.0
    for j, p in enumerate(model.posterior_params(ids)):
        p = p.repeat_interleave(K, dim=0)  # (B*K, param_dim), rows b*K + k
        z = family.sample(p, layer=j)
        log_p = family.log_prior(z, layer=j)
        log_prior_ratio = log_prior_ratio + log_p.double() - family.log_q(z, p, layer=j).double()
        zs.append(z)
    tgt = trim(ids, model.config.pad_token_id).repeat_interleave(K, dim=0)
    ll, _ = sequence_log_likelihood(model, torch.cat(zs, dim=-1), tgt)
    log_w = (ll.double() + log_prior_ratio).view(B, K)
    return torch.logsumexp(log_w, dim=1) - math.log(K), log_w.mean(1)


# ----------------------------------------------------------------------------- sections


def reconstruction_section(model, texts, beam_size, batch_size, n_examples):
    greedy, beam = [], []
    for chunk in progress(chunks(texts, batch_size), "reconstruct (greedy, beam)"):
        greedy += model.reconstruct(chunk, batch_size=batch_size)
        beam += model.reconstruct(chunk, beam_size=beam_size, batch_size=batch_size)
    section = {
        "greedy": metrics.full_reconstruction_scores(greedy, texts),
        "beam": metrics.full_reconstruction_scores(beam, texts),
    }
    examples = [{"text": t, "greedy": g, "beam": b} for t, g, b in list(zip(texts, greedy, beam))[:n_examples]]
    return section, examples, greedy


def likelihood_and_latent_sections(model, ids, texts, iw_samples, iw_sentences, batch_size, au_delta=0.01):
    """Posterior-mean CE / bits per char, KL per layer and the collapse diagnostics (univae.diagnostics:
    MI, active units) over all sentences; the importance-weighted NLL over the first iw_sentences."""
    pad = model.config.pad_token_id
    total_nats, n_tokens, params_list = 0.0, 0, []
    encoded = model.posterior_chunks(ids, batch_size)
    for chunk, params in progress(encoded, "likelihood (posterior mean)", total=-(-len(ids) // batch_size)):
        mu = model.mean_code(params)
        ll, n = sequence_log_likelihood(model, mu, trim(chunk, pad))
        total_nats -= ll.sum().item()
        n_tokens += n.sum().item()
        params_list.append([p.float() for p in params])
    params_list = [torch.cat(layer) for layer in zip(*params_list)]  # per layer (N, param_dim)
    n_chars = metrics.predicted_chars(texts)
    likelihood = {
        "ce": total_nats / max(n_tokens, 1),
        "bits_per_char": metrics.bits_per_char(total_nats, n_chars),
        "iw_nll": None,
        "iw_ppl": None,
        "iw_bits_per_char": None,
        "neg_elbo": None,
    }
    kl_per_layer = [model.family.kl(p, layer=j).mean().item() for j, p in enumerate(params_list)]
    latent = {
        "kl": sum(kl_per_layer),
        "kl_per_layer": kl_per_layer,
        "mi": None,
        "mi_per_layer": None,
        "au": None,
        "au_per_layer": None,
    }
    if len(ids) >= 2:
        latent.update(latent_metrics(model.family, params_list, au_delta))
        warning = collapse_warning(latent, model.config, au_delta)
        if warning:
            latent["warning"] = warning
    else:
        latent["note"] = "mi, au: need at least 2 sentences"

    if not has_density(model):
        likelihood["note"] = f"no importance-weighted NLL: the {model.config.latent!r} family has no density here"
        return likelihood, latent
    iw_ids, iw_texts = ids[:iw_sentences], texts[:iw_sentences]
    per_batch = max(1, batch_size // iw_samples)  # sentences per forward: about batch_size rows of K samples each
    nll, neg_elbo = [], []
    for chunk in progress(iw_ids.split(per_batch), f"likelihood (IW, K={iw_samples})"):
        log_px, elbo = importance_weighted(model, chunk.to(model.device), iw_samples)
        nll += (-log_px).tolist()
        neg_elbo += (-elbo).tolist()
    iw_tokens = int((iw_ids[:, 1:] != pad).sum())
    iw_chars = metrics.predicted_chars(iw_texts)
    likelihood.update(
        iw_nll=metrics.mean(nll),
        iw_ppl=math.exp(sum(nll) / iw_tokens),
        iw_bits_per_char=metrics.bits_per_char(sum(nll), iw_chars),
        neg_elbo=metrics.mean(neg_elbo),
    )
    return likelihood, latent


def available_priors(model):
    """The priors sample_prior can draw from: the training prior always, the fitted density when the
    checkpoint has one. The last is what prior="auto" (sample.py's default) picks."""
    return ["uniform"] + (["fitted"] if model.fitted_prior is not None else [])


def prior_block(model, prior, n_samples, opts, train_texts, first_chars, data_first_share):
    """Sentences decoded from n_samples draws of one prior, and their scores. Token ids come from
    decode_ids: a row that never produced [SEP] has all maxlen - 1 generated tokens, one that did
    has at most maxlen - 2 before it."""
    z = model.sample_prior(n_samples, prior=prior)
    ids = []
    for zb in progress(z.split(opts.batch_size), f"prior samples ({prior})"):
        ids += decode_ids(model, zb, opts)
    samples = [detokenize(model.tokenizer, row) for row in ids]
    share = metrics.first_char_share(samples, first_chars) if first_chars is not None else None
    block = {
        "n_samples": n_samples,
        "distinct_1": metrics.distinct_n(samples, 1),
        "distinct_2": metrics.distinct_n(samples, 2),
        "self_bleu": metrics.self_bleu(samples),
        "novelty": metrics.novelty(samples, train_texts) if train_texts is not None else None,
        "first_char_plausibility": share,
        "first_char_ratio": share / data_first_share if share is not None and data_first_share else None,
        "ended_with_sep": metrics.mean(len(row) < model.config.maxlen - 1 for row in ids),
        "mean_length": metrics.mean(len(metrics.strip_ws(s)) for s in samples),
    }
    return block, samples


def prior_section(model, n_samples, data_texts, train_texts, decoding, n_examples, seeds):
    """One block per available prior (prior.uniform, prior.fitted), each drawn under its seed in `seeds`;
    the top-level keys repeat the block of the default prior (what prior="auto" draws from), as
    before there were two. Returns (section, examples per prior, the default prior's samples)."""
    opts = Decoding(**decoding)
    first_chars = metrics.top_first_chars(train_texts, metrics.FIRST_CHARS) if train_texts is not None else None
    data_share = metrics.first_char_share(data_texts, first_chars) if first_chars is not None else None
    priors = available_priors(model)
    # the same diversity scores for as many held-out sentences (distinct-n falls as the count grows)
    reference = data_texts[:n_samples]
    section = {
        "default": priors[-1],
        "data_mean_length": metrics.mean(len(metrics.strip_ws(s)) for s in data_texts),
        "data_first_char_plausibility": data_share,
        "data_n": len(reference),
        "data_distinct_1": metrics.distinct_n(reference, 1),
        "data_distinct_2": metrics.distinct_n(reference, 2),
        "data_self_bleu": metrics.self_bleu(reference),
        "fitted": None,
        "fitted_spread": SAMPLE_SPREAD,
    }
    notes, examples, samples = [], {}, {}
    for prior in priors:
        torch.manual_seed(seeds[prior])
        section[prior], samples[prior] = prior_block(
            model, prior, n_samples, opts, train_texts, first_chars, data_share
        )
        examples[prior] = samples[prior][:n_examples]
    section.update(section[section["default"]])
    if "fitted" not in priors:
        notes.append(
            "no fitted prior in the checkpoint (python -m univae.prior fits one): only the training prior is sampled"
        )
    if train_texts is None:
        notes.append(
            f"novelty, first-character plausibility: no {ARGS_FILE} in the checkpoint, so no training corpus to compare with"
        )
    if notes:
        section["note"] = "; ".join(notes)
    return section, examples, samples[section["default"]]


def control_scores(texts, outputs, reconstructions, n_edits, classes):
    """Scores of the edited outputs, n_edits per sentence (rows grouped per sentence), against their
    sentences: char F1, edit distance, `changed` (differs from the unedited reconstruction), and the
    content / pattern characters kept (univae.metrics.CharClasses; None without classes). A sentence
    with no content (pattern) character is left out of the content (pattern) average."""
    if len(outputs) != len(texts) * n_edits:
        raise ValueError(f"{len(outputs)} outputs for {len(texts)} sentences x {n_edits} edits")
    src = [t for t in texts for _ in range(n_edits)]
    rec = [r for r in reconstructions for _ in range(n_edits)]
    scores = {
        "char_f1": metrics.mean(metrics.char_f1(o, t) for o, t in zip(outputs, src)),
        "edit_distance": metrics.mean(metrics.edit_distance(o, t) for o, t in zip(outputs, src)),
        "changed": metrics.mean(metrics.strip_ws(o) != metrics.strip_ws(r) for o, r in zip(outputs, rec)),
        "content_kept": None,
        "pattern_kept": None,
    }
    if classes is not None:
        for key, kept in (("content_kept", metrics.content_kept), ("pattern_kept", metrics.pattern_kept)):
            recalls = [kept(t, o, classes) for o, t in zip(outputs, src)]
            scores[key] = metrics.mean(x for x in recalls if x is not None)
    return scores


def lowest_vs_top(per_layer):
    """Content and pattern kept when the lowest latent layer is redrawn vs the top one, and lowest
    minus top; None with fewer than two latent layers."""
    if len(per_layer) < 2:
        return None
    lo, top = per_layer[0], per_layer[-1]
    out = {"lowest": lo["name"], "top": top["name"]}
    for key in ("content_kept", "pattern_kept"):
        a, b = lo[key], top[key]
        ok = all(isinstance(x, float) and math.isfinite(x) for x in (a, b))
        out[key] = {"lowest": a, "top": b, "diff": a - b if ok else None}
    return out


def char_classes_or_note():
    """The bundled corpora's content/pattern characters, or (None, why not)."""
    try:
        return metrics.bundled_char_classes(), None
    except CorpusError as e:
        return None, f"content/pattern kept: no IDF corpus ({e})"


def control_section(model, texts, reconstructions, ranges, n_edits, classes, batch_size, n_examples):
    """For each range, n_edits copies of each sentence's code with those dims redrawn (edit_z, from the
    fitted prior when the checkpoint has one), all decoded greedily in one stacked batch per range,
    and compared with the sentence. ranges: [(name, layer or None, dims spec)]."""
    prior = available_priors(model)[-1]
    z = model.encode(texts, batch_size=batch_size).to(model.device)
    rows, edited = [], {}
    for name, layer, dims in progress(ranges, f"multi-scale control ({len(texts)} x {n_edits} edits per range)"):
        z_edit = torch.cat(
            [edit_z(model, zi, dims, n_edits, prior=prior) for zi in z]
        )  # (N * n_edits, D), grouped per sentence
        outputs = model.generate(z_edit, batch_size=batch_size)
        _, spans = parse_dims(dims, edit_size(model))
        rows.append(
            {
                "name": name,
                "layer": layer,
                "dims": ",".join(f"{a}:{b}" for a, b in spans),
                **control_scores(texts, outputs, reconstructions, n_edits, classes),
            }
        )
        edited[name] = outputs[::n_edits]  # the first edit of each sentence, for the examples
    section = {
        "prior": prior,
        "n_sentences": len(texts),
        "edits_per_sentence": n_edits,
        "unedited": control_scores(texts, reconstructions, reconstructions, 1, classes),
        "per_layer": [r for r in rows if r["layer"] is not None],
        "ranges": [r for r in rows if r["layer"] is None],
    }
    section["lowest_vs_top"] = lowest_vs_top(section["per_layer"])
    if classes is not None:
        content = lambda t: any(classes.is_content(c) for c in metrics.strip_ws(t))
        pattern = lambda t: any(not classes.is_content(c) for c in metrics.strip_ws(t))
        section["n_without_content"] = sum(not content(t) for t in texts)
        section["n_without_pattern"] = sum(not pattern(t) for t in texts)
        section["char_classes"] = {
            "corpora": list(metrics.IDF_CORPORA),
            "n_documents": classes.n_docs,
            "idf_threshold": classes.threshold,
            "n_chars": len(classes.idf),
            "n_content": len(classes.content),
        }
    examples = [
        {"text": t, "reconstruction": r, "edits": {name: out[i] for name, out in edited.items()}}
        for i, (t, r) in enumerate(list(zip(texts, reconstructions))[:n_examples])
    ]
    return section, rows, examples


DOWNSTREAM_INPUTS = 100  # held-out negatives moved to positive
DOWNSTREAM_AUG_N = 200  # labelled sentences for the small augmentation check


def downstream_section(model, train_args, seed, batch_size):
    """Transfer and a small augmentation check on the corpus's labels (univae/downstream.py), or
    a note saying why not."""
    data = downstream.labelled_data(train_args, model.config.maxlen) if train_args else None
    if data is None:
        corpus = (train_args or {}).get("corpus")
        return {
            "transfer": None,
            "augmentation": None,
            "note": f"skipped: the training corpus ({corpus or f'unknown, no {ARGS_FILE}'}) has no labels "
            "(builtin:reviews has: its pos/neg files)",
        }
    section, notes = {"transfer": None, "augmentation": None}, []
    t = downstream.transfer_trial(
        model, data, [0, DEFAULT_STRENGTH], seed=seed, n_inputs=DOWNSTREAM_INPUTS, batch_size=batch_size
    )
    base, moved = t["rows"]
    section["transfer"] = {
        "n_inputs": t["n_inputs"],
        "n_held_out_inputs": t["n_held_out_inputs"],
        "n_from": t["n_from"],
        "n_to": t["n_to"],
        "method": t["method"],
        "strength": DEFAULT_STRENGTH,
        "positive": moved["positive"],
        "char_f1": moved["char_f1"],
        "baseline_positive": base["positive"],
        "baseline_char_f1": base["char_f1"],
        "inputs_positive": t["inputs_positive"],
        "examples": [{"input": a, "output": b} for a, b in moved["examples"]],
    }
    try:
        r = downstream.augmentation_trial(model, data, [DOWNSTREAM_AUG_N], [seed], 4, batch_size=batch_size)
    except ImportError as e:
        notes.append(f"augmentation: {e}")
    else:
        row = r["rows"][0]
        section["augmentation"] = {
            "n": row["n"],
            "n_variants": row["variants"],
            "seed": seed,
            "n_test": r["n_test"],
            "n_test_held_out": r["n_test_held_out"],
            "baseline": row["baseline"],
            "copies": row["copies"],
            "augmented": row["augmented"],
        }
    if notes:
        section["note"] = "; ".join(notes)
    return section


def interpolation_section(model, texts, n_paths, steps):
    pairs = list(zip(texts[0::2], texts[1::2]))[:n_paths]
    paths = [model.interpolate(a, b, steps) for a, b in progress(pairs, "interpolation")]
    section = {
        "n_paths": len(paths),
        "steps": steps,
        "step_edit_distance": metrics.path_smoothness(paths) if paths else None,
    }
    return section, [{"a": a, "b": b, "path": p} for (a, b), p in zip(pairs, paths)]


# ----------------------------------------------------------------------------- training curves


def training_section(checkpoint):
    path = find_metrics_file(checkpoint)
    if path is None:
        return None, None
    train, val = read_metrics(path)
    steps = [r["step"] for r in train + val]
    return {"metrics_file": path, "last_step": max(steps) if steps else None, "last_val": val[-1] if val else None}, (
        train,
        val,
    )
