r"""Evaluate a UniVAE checkpoint: one command, a report.json, a readable report.md and PNG plots.

    python -m univae.evaluate --checkpoint runs/default/last                 # test split of its corpus
    python -m univae.evaluate --checkpoint DIR --data my_test.txt --out eval/ --replace-dims 0:32

--data is a sentence file (.txt, .jsonl) or CORPUS:SPLIT, e.g. builtin:reviews:test: the corpus
loaded and split exactly as train.py did (limit maxlen - 2, the checkpoint's split seed from
train_args.json, default 0). Without --data: the test split of the checkpoint's training corpus,
else builtin:reviews:test. --out defaults to CHECKPOINT/eval. Sentences are compared with
whitespace ignored (univae.metrics). The sections, in report.json:

## report.json

Every number is a float (or int) or `null` when it could not be computed; a section that skipped
something says why in its `note`. Rates are in [0, 1]; BLEU is on sacrebleu's 0-100 scale; NLL and
KL are in nats; lengths are in characters (whitespace ignored).

| key | meaning |
|---|---|
| `checkpoint.path`, `.step`, `.config`, `.train_args` | what was evaluated (`step` from a `step-N` dir name, else null; `train_args` null outside train.py checkpoints) |
| `data.spec`, `.source` | the --data argument and what it resolved to |
| `data.n_sentences`, `.n_available` | sentences evaluated (the first --max-sentences) / in the set |
| `data.n_truncated`, `.n_unk_tokens` | sentences longer than maxlen - 2 tokens; [UNK] tokens |
| `data.mean_length` | mean sentence length (chars) |
| `data.round_trip_exact_match` | share of sentences equal to their own tokenise-detokenise round trip: the ceiling of exact match |
| `settings.*` | the flags the report was made with |
| `reconstruction.greedy.exact_match`, `.char_f1`, `.char_bleu`, `.edit_distance` | greedy decoding of the posterior mean vs the sentence: exact-match rate, mean char F1, corpus char BLEU (`tokenize="zh"`), mean normalised Levenshtein distance |
| `reconstruction.beam.*` | the same with beam search (`settings.beam_size`) |
| `likelihood.ce`, `.bits_per_char` | teacher-forced CE per target token (incl. the closing [SEP]) and bits per char (+1 per sentence for [SEP]) given the posterior mean, as train.py's val rows |
| `likelihood.iw_nll` | importance-weighted -log p(x) per sentence, `settings.iw_samples` samples of q(z\|x), first `settings.iw_sentences` sentences (Optimus' estimator) |
| `likelihood.iw_ppl`, `.iw_bits_per_char` | exp(sum iw_nll / target tokens, [SEP] included); sum iw_nll in bits per char |
| `likelihood.neg_elbo` | -ELBO per sentence, E_q[-log p(x\|z) + log q(z\|x) - log p(z)] on the same samples and sentences: never below iw_nll |
| `latent.kl`, `.kl_per_layer` | KL(q(z\|x) \|\| p(z)) per sentence, total and per latent layer (lowest first) |
| `latent.mi`, `.mi_per_layer` | mutual information I(x; z) over the evaluated sentences (univae.diagnostics, Optimus' estimator): whole code, and each layer alone |
| `latent.au`, `.au_per_layer` | active units: dims with Var_x(E_q[z_d]) > `settings.au_delta` (Burda et al. 2016) |
| `latent.kl_per_dim` | mean KL per layer and dim, (n_latent, z_dim); present only for families whose KL splits over dims (Gaussian; gmm: its z part; not vMF or VQ) |
| `latent.codebook.perplexity`, `.used_fraction`, `.restarts` | vq only, per latent layer: exp(entropy) of the codes the sentences pick (at most min(N, K)), the fraction of the K codes picked at least once, dead-code restarts during training; `latent.mi` is then H(codes) |
| `latent.mixture.usage`, `.usage_entropy`, `.mi_c`, `.dispersion`, `.mean_spread`, `.mean_std` | gmm only, per latent layer: component usage mean_x q(c\|x) and its entropy (nats, at most log K), I(x; c), DEM-VAE's dispersion, mean pairwise distance between component means and the components' root-mean variance |
| `prior.uniform`, `prior.fitted` | one block per prior, each of `n_samples` sentences decoded from its draws (--n-samples, decoding in `settings.prior_decoding`): `uniform` is the training prior, `fitted` the density fitted to the training codes (univae.density); `fitted` is null without one (the note says so) |
| each prior block | `n_samples`; `distinct_1`, `distinct_2` (distinct char uni/bigrams / all, over all samples); `self_bleu` (mean sentence BLEU of each sample against all others, lower = more diverse); `novelty` (share not a sentence of the training split; null without train_args.json); `first_char_plausibility` (share whose first char is among the 100 most frequent first chars of the training split's sentences; null without train_args.json) and `first_char_ratio` (that over `prior.data_first_char_plausibility`); `ended_with_sep` (share that produced [SEP] before maxlen); `mean_length` |
| `prior.default` | the prior sample.py draws from (prior="auto": `fitted` when there is one, else `uniform`); the top-level `prior.n_samples`, `.distinct_1`, ... `.mean_length` repeat its block, as before there were two |
| `prior.data_mean_length`, `.data_first_char_plausibility` | the evaluated (held-out) sentences' mean length and first-character plausibility |
| `prior.fitted_spread` | the fitted prior's draws: each component's standard deviation times this (univae.density.SAMPLE_SPREAD, as sample.py draws) |
| `prior.data_distinct_1`, `.data_distinct_2`, `.data_self_bleu`, `.data_n` | the same diversity scores for the first `data_n` (≤ n_samples) held-out sentences: what real sentences score at that count |
| `control.prior`, `.n_sentences`, `.edits_per_sentence` | the multi-scale control redraws dims from `prior` (`fitted` when the checkpoint has one, else `uniform`), `edits_per_sentence` times (--control-edits) for each of the first `n_sentences` evaluated sentences (--control-sentences), all decoded greedily |
| `control.per_layer` | one row per latent layer (lowest first): that layer's dims redrawn |
| `control.ranges` | the same for each --replace-dims range (for vq the ranges are code positions, one per latent layer) |
| each control row | `name`, `layer` (Transformer layer index, null for a range), `dims` ("start:stop", comma-separated for several ranges); over all edits: `char_f1` and `edit_distance` vs the original sentence, `changed` (share whose output differs from the unedited greedy reconstruction), `content_kept` / `pattern_kept` (multiset recall of the sentence's content / pattern chars in the output, univae.metrics.CharClasses; a sentence without such chars is left out of that mean; null without the IDF corpus) |
| `control.unedited` | the same scores for the unedited greedy reconstructions (`changed` is 0) |
| `control.lowest_vs_top` | `lowest`, `top` (row names) and for `content_kept`, `pattern_kept`: `lowest`, `top` and `diff` = lowest - top (null with one latent layer) |
| `control.char_classes` | `corpora` (the IDF corpora: bundled reviews + news, one document per sentence), `n_documents`, `idf_threshold` (median IDF over character occurrences; content = above it and not punctuation/symbol), `n_chars`, `n_content`; `control.n_without_content`, `.n_without_pattern`: control sentences left out of each mean |
| `interpolation.n_paths`, `.steps` | paths between the codes of successive pairs of sentences (slerp per vMF layer, linear otherwise; vq: each point snapped to the nearest code), ends included |
| `interpolation.step_edit_distance` | mean normalised edit distance between successive outputs on a path (0 = no change; lower = smoother) |
| `training.metrics_file`, `.last_step`, `.last_val` | metrics.jsonl found beside or above the checkpoint, its last step and last val row; the section is null without one |
| `plots.*` | PNG file names in --out (`control`, `lengths`, `training_curves`; a missing plot is null) |
| `examples.reconstruction`, `.prior`, `.priors`, `.control`, `.interpolation` | the first --n-examples of each section, shown in report.md (`prior`: the default prior's; `priors`: per prior; `control`: each range's first edit) |
| `downstream.transfer` | when the corpus has labels (builtin:reviews: its pos/neg files; univae/downstream.py): `n_inputs` held-out single-piece negative reviews moved towards the positive ones (`method` direction between the codes of `n_from` / `n_to` train-split reviews of each label, `strength`), greedy; `positive` = share judged positive by snownlp (SnowNLP(s).sentiments > 0.5), `char_f1` with the input; `baseline_positive`, `baseline_char_f1` the same for the plain reconstructions; `inputs_positive` the judge on the inputs |
| `downstream.augmentation` | a small check, not the benchmark (bench/augment.py): `n` labelled train-split reviews (seed `seed`), a char 1-2-gram TF-IDF + logistic regression trained without (`baseline`), with rows repeated (`copies`) and with `n_variants` augment() variants each (`augmented`), accuracy on `n_test` labelled reviews (held-out first); null with a `note` without scikit-learn |
| `downstream.note` | why the section was skipped (a corpus without labels) or cut short |
| `notes`, `seconds` | report-wide notes (e.g. an assumed split seed); wall time of the evaluation |
"""

import argparse
import json
import math
import os
import sys
import time
import warnings
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from univae import downstream, metrics
from univae.data import CorpusError, load_sentences
from univae.decoding import Decoding, decode_ids
from univae.density import SAMPLE_SPREAD
from univae.diagnostics import latent_metrics
from univae.generate import DEFAULT_STRENGTH, edit_size, edit_z, layer_span, parse_dims
from univae.latents import family_class
from univae.model import UniVAE
from univae.rundir import ARGS_FILE, checkpoint_step, read_train_args, split_corpus
from univae.tokenizer import detokenize, encode_texts

SPLITS = ("train", "val", "test")
PRIOR_NAMES = ("uniform", "fitted")  # the report's prior blocks, in this order
FIRST_CHARS = 100  # first-character plausibility: the training split's 100 most frequent first characters


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
    for chunk in progress(ids.split(batch_size), "likelihood (posterior mean)"):
        chunk = chunk.to(model.device)
        params = model.posterior_params(chunk)
        mu = model.mean_code(params)
        ll, n = sequence_log_likelihood(model, mu, trim(chunk, pad))
        total_nats -= ll.sum().item()
        n_tokens += n.sum().item()
        params_list.append([p.float() for p in params])
    params_list = [torch.cat(layer) for layer in zip(*params_list)]  # per layer (N, param_dim)
    n_chars = sum(
        len(metrics.strip_ws(t)) + 1 for t in texts
    )  # +1: the closing [SEP] is predicted too (as training.evaluate)
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
    iw_chars = sum(len(metrics.strip_ws(t)) + 1 for t in iw_texts)
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
    first_chars = metrics.top_first_chars(train_texts, FIRST_CHARS) if train_texts is not None else None
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


def find_metrics_file(checkpoint):
    """metrics.jsonl in the checkpoint dir or its parent (train.py: OUT/metrics.jsonl, OUT/step-N)."""
    candidates = [
        checkpoint,
        os.path.dirname(os.path.abspath(checkpoint)),
        os.path.dirname(os.path.realpath(checkpoint)),
    ]  # OUT/last -> step-N: both parents are OUT
    for d in candidates:
        path = os.path.join(d, "metrics.jsonl")
        if os.path.isfile(path):
            return path
    return None


def read_metrics(path):
    """metrics.jsonl -> (train rows, val rows), each sorted by step; a step logged twice (a resumed
    run re-logs the steps after its checkpoint) keeps its last row. Unreadable lines are skipped."""
    train, val = {}, {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
            if isinstance(row, dict) and "step" in row:
                (val if row.get("split") == "val" else train)[row["step"]] = row
    return [train[s] for s in sorted(train)], [val[s] for s in sorted(val)]


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


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(train, val, path):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [
        ("loss / CE", [(train, "loss", "train loss"), (val, "ce", "val CE")]),
        ("KL and MI (nats)", [(train, "kl", "train KL"), (val, "kl", "val KL"), (val, "mi", "val MI")]),
        ("reconstruction (val, greedy)", [(val, "char_f1", "char F1"), (val, "exact_match", "exact match")]),
    ]
    for ax, (title, series) in zip(axes, panels):
        for rows, key, label in series:
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), label=label, marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_control(rows, unedited_f1, path):
    plt = _pyplot()
    labels = [f"{r['name']}\n{r['dims']}" if r["layer"] is not None else r["name"] for r in rows]
    bars = [
        ("char_f1", "char F1 with the sentence"),
        ("content_kept", "content chars kept"),
        ("pattern_kept", "pattern chars kept"),
        ("changed", "share changed"),
    ]
    bars = [(key, label) for key, label in bars if any(isinstance(r[key], float) for r in rows)]
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(rows) + 2), 4.4))
    for b, (key, label) in enumerate(bars):
        x = [i + (b - (len(bars) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(x, [r[key] if isinstance(r[key], float) else 0.0 for r in rows], width=width, label=label)
    ax.axhline(unedited_f1, color="gray", linestyle="--", label="char F1, unedited")
    ax.set_xticks(list(range(len(rows))), labels)
    ax.set_ylim(0, 1)
    ax.set_title("dims replaced by a prior draw (lowest latent layer left)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_lengths(data_texts, samples, maxlen, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = list(range(0, maxlen + 1))
    ax.hist([len(metrics.strip_ws(s)) for s in data_texts], bins=bins, alpha=0.6, density=True, label="data")
    ax.hist([len(metrics.strip_ws(s)) for s in samples], bins=bins, alpha=0.6, density=True, label="prior samples")
    ax.set_xlabel("length (chars)")
    ax.set_title("sentence lengths")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- report.md


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def md_table(headers, rows):
    cell = lambda v: fmt(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def headline_rows(report):
    r, lk, lt, pr = report["reconstruction"], report["likelihood"], report["latent"], report["prior"]
    rows = [
        (
            "reconstruction, greedy: exact / char F1 / char BLEU",
            f"{fmt(r['greedy']['exact_match'])} / {fmt(r['greedy']['char_f1'])} / {fmt(r['greedy']['char_bleu'], 1)}",
        ),
        (
            f"reconstruction, beam {report['settings']['beam_size']}: exact / char F1 / char BLEU",
            f"{fmt(r['beam']['exact_match'])} / {fmt(r['beam']['char_f1'])} / {fmt(r['beam']['char_bleu'], 1)}",
        ),
        ("CE / bits per char (posterior mean)", f"{fmt(lk['ce'])} / {fmt(lk['bits_per_char'])}"),
        (f"IW NLL / PPL (K={report['settings']['iw_samples']})", f"{fmt(lk['iw_nll'], 2)} / {fmt(lk['iw_ppl'], 2)}"),
        (
            "latent: KL (per layer) / MI / active units",
            f"{fmt(lt['kl'], 2)} ({', '.join(fmt(k, 2) for k in lt['kl_per_layer'])}) / {fmt(lt['mi'])} / "
            f"{fmt(lt['au'])} of {report['checkpoint']['config']['num_latent_layers'] * report['checkpoint']['config']['z_dim']}",
        ),
    ]
    for name in PRIOR_NAMES:
        b = pr.get(name)
        if b:
            rows += [
                (
                    f"prior ({name}): distinct-1 / distinct-2 / self-BLEU",
                    f"{fmt(b['distinct_1'])} / {fmt(b['distinct_2'])} / {fmt(b['self_bleu'], 1)}",
                ),
                (
                    f"prior ({name}): novelty / first char plausible (data) / ended with [SEP]",
                    f"{fmt(b['novelty'])} / {fmt(b['first_char_plausibility'])} ({fmt(pr['data_first_char_plausibility'])}) / {fmt(b['ended_with_sep'])}",
                ),
            ]
    ctl = report["control"]
    rows += [
        (
            f"control ({ctl['prior']} prior): char F1 with a layer redrawn (lowest first)",
            ", ".join(fmt(row["char_f1"]) for row in ctl["per_layer"]),
        ),
        (
            "control: content kept / pattern kept with a layer redrawn (lowest first)",
            " / ".join(
                ", ".join(fmt(row[key]) for row in ctl["per_layer"]) for key in ("content_kept", "pattern_kept")
            ),
        ),
        ("interpolation: step edit distance", fmt(report["interpolation"]["step_edit_distance"])),
    ]
    tr, au = (report.get("downstream") or {}).get("transfer"), (report.get("downstream") or {}).get("augmentation")
    if tr:
        rows.append(
            (
                f"transfer neg → pos (strength {tr['strength']:g}): judged positive / char F1 (reconstruction)",
                f"{fmt(tr['positive'])} / {fmt(tr['char_f1'])} ({fmt(tr['baseline_positive'])} / {fmt(tr['baseline_char_f1'])})",
            )
        )
    if au:
        rows.append(
            (
                f"augmentation check, N={au['n']}: accuracy baseline / copies / augmented",
                f"{fmt(au['baseline'])} / {fmt(au['copies'])} / {fmt(au['augmented'])}",
            )
        )
    if lt.get("codebook"):
        cb = lt["codebook"]
        rows.append(
            (
                "codebook (per layer): perplexity / used fraction",
                f"{', '.join(fmt(x, 1) for x in cb['perplexity'])} / {', '.join(fmt(x, 3) for x in cb['used_fraction'])}",
            )
        )
    if lt.get("mixture"):
        mx = lt["mixture"]
        rows.append(
            (
                "mixture (per layer): component usage entropy / I(x; c) / mean spread",
                f"{', '.join(fmt(x, 2) for x in mx['usage_entropy'])} / {', '.join(fmt(x, 2) for x in mx['mi_c'])} / "
                f"{', '.join(fmt(x, 2) for x in mx['mean_spread'])}",
            )
        )
    return rows


def at(xs, j):
    return xs[j] if xs is not None else None


def config_latent_layers(config):
    L, n = config["num_hidden_layers"], config["num_latent_layers"]
    return list(range(L - n, L))


def write_markdown(report, path):
    c, d, s = report["checkpoint"], report["data"], report["settings"]
    ex = report["examples"]
    out = [f"# UniVAE evaluation: `{c['path']}`", ""]
    out += ["## Headline", "", md_table(["metric", "value"], headline_rows(report)), ""]

    config = c["config"]
    out += [
        "## Checkpoint",
        "",
        f"Step {fmt(c['step'])}. {config['model_type']}, {config['num_hidden_layers']} layers x {config['hidden_size']}, "
        f"{config['num_latent_layers']} latent layers x {config['z_dim']} dims ({config['latent']}"
        + "".join(f", {d}" for d in [family_class(config["latent"]).describe(SimpleNamespace(**config))] if d)
        + f"), maxlen {config['maxlen']}, "
        f"vocab {config['vocab_size']}.",
        "",
        "<details><summary>config.json</summary>",
        "",
        "```json",
        json.dumps(config, indent=2, ensure_ascii=False),
        "```",
        "",
        "</details>",
        "",
    ]
    if c["train_args"]:
        out += [
            f"Trained on `{c['train_args'].get('corpus')}` (split seed {c['train_args'].get('split_seed', 0)}).",
            "",
        ]

    out += [
        "## Data",
        "",
        f"{d['source']}: {d['n_sentences']} sentences evaluated of {d['n_available']}, mean length "
        f"{fmt(d['mean_length'], 1)} chars; {d['n_truncated']} longer than maxlen, {d['n_unk_tokens']} [UNK] tokens. "
        f"{fmt(d['round_trip_exact_match'])} of the sentences survive the tokeniser's round trip unchanged "
        "(the ceiling of exact match).",
        "",
    ]

    r = report["reconstruction"]
    out += [
        "## Reconstruction",
        "",
        "Decoding the posterior mean; compared with the sentence, whitespace ignored.",
        "",
        md_table(
            ["decoding", "exact match", "char F1", "char BLEU", "edit distance"],
            [
                (name, r[name]["exact_match"], r[name]["char_f1"], r[name]["char_bleu"], r[name]["edit_distance"])
                for name in ("greedy", "beam")
            ],
        ),
        "",
        md_table(
            ["sentence", "greedy", f"beam {s['beam_size']}"],
            [(e["text"], e["greedy"], e["beam"]) for e in ex["reconstruction"]],
        ),
        "",
    ]

    lk, lt = report["likelihood"], report["latent"]
    out += [
        "## Likelihood and latent health",
        "",
        md_table(
            ["CE / token", "bits / char", f"IW NLL (K={s['iw_samples']})", "IW PPL", "IW bits / char", "-ELBO"],
            [(lk["ce"], lk["bits_per_char"], lk["iw_nll"], lk["iw_ppl"], lk["iw_bits_per_char"], lk["neg_elbo"])],
        ),
        "",
        f"IW over the first {s['iw_sentences']} sentences; NLL and -ELBO in nats per sentence."
        + (f" {lk['note']}." if lk.get("note") else ""),
        "",
        md_table(
            ["latent layer", "KL (nats)", "MI (nats, layer alone)", f"active units (of {config['z_dim']})"],
            [
                (f"layer {l}", k, at(lt["mi_per_layer"], j), at(lt["au_per_layer"], j))
                for j, (l, k) in enumerate(zip(config_latent_layers(config), lt["kl_per_layer"]))
            ]
            + [("whole code", lt["kl"], lt["mi"], lt["au"])],
        ),
        "",
        f"MI is Optimus' estimate over the evaluated sentences (at most log N = {fmt(math.log(max(d['n_sentences'], 1)), 2)} nats); "
        f"a unit is active when Var_x(E_q[z_d]) > {s['au_delta']:g}." + (f" {lt['note']}." if lt.get("note") else ""),
        "",
    ]
    if lt.get("codebook"):
        cb = lt["codebook"]
        out += [
            md_table(
                ["latent layer", "codebook perplexity", "codes used", "restarts in training"],
                [
                    (f"layer {l}", cb["perplexity"][j], cb["used_fraction"][j], cb["restarts"][j])
                    for j, l in enumerate(config_latent_layers(config))
                ],
            ),
            "",
            f"Over the evaluated sentences, of {config['codebook_size']} codes per layer; the perplexity is at most "
            f"min(N, K). VQ's encoder is deterministic: MI is the entropy of the codes picked.",
            "",
        ]
    if lt.get("mixture"):
        mx = lt["mixture"]
        out += [
            md_table(
                [
                    "latent layer",
                    "component usage",
                    "usage entropy",
                    "I(x; c)",
                    "dispersion",
                    "mean spread",
                    "mean std",
                ],
                [
                    (
                        f"layer {l}",
                        " ".join(f"{u:.2f}" for u in mx["usage"][j]),
                        mx["usage_entropy"][j],
                        mx["mi_c"][j],
                        mx["dispersion"][j],
                        mx["mean_spread"][j],
                        mx["mean_std"][j],
                    )
                    for j, l in enumerate(config_latent_layers(config))
                ],
            ),
            "",
            f"Usage is mean_x q(c|x) over the evaluated sentences (entropy at most log K = "
            f"{fmt(math.log(config['mixture_components']), 2)} nats); the spread is the mean pairwise distance between "
            "component means, next to the components' root-mean variance.",
            "",
        ]

    p = report["prior"]
    priors = [name for name in PRIOR_NAMES if p.get(name)]
    out += [
        "## Prior samples",
        "",
        f"{p['n_samples']} sentences decoded from draws of each prior ({s['prior_decoding']} decoding): `uniform` is the "
        "training prior the KL is measured against, `fitted` the density fitted to the training set's posterior codes. "
        f"The default (what sample.py draws from) is `{p['default']}`. A first character is plausible when it is "
        f"among the {FIRST_CHARS} most frequent first characters of the training sentences; the ratio divides the "
        "samples' share by the held-out sentences'.",
        "",
        md_table(
            [
                "prior",
                "distinct-1",
                "distinct-2",
                "self-BLEU",
                "novelty",
                "first char plausible",
                "ratio to data",
                "ended with [SEP]",
                "mean length",
            ],
            [
                (
                    name,
                    p[name]["distinct_1"],
                    p[name]["distinct_2"],
                    p[name]["self_bleu"],
                    p[name]["novelty"],
                    p[name]["first_char_plausibility"],
                    p[name]["first_char_ratio"],
                    p[name]["ended_with_sep"],
                    p[name]["mean_length"],
                )
                for name in priors
            ]
            + [
                (
                    f"held-out sentences ({p['data_n']})",
                    p["data_distinct_1"],
                    p["data_distinct_2"],
                    p["data_self_bleu"],
                    None,
                    p["data_first_char_plausibility"],
                    None,
                    None,
                    p["data_mean_length"],
                )
            ],
        ),
        "",
    ]
    if p.get("note"):
        out += [p["note"] + ".", ""]
    if report["plots"].get("lengths"):
        out += [f"![lengths]({report['plots']['lengths']})", ""]
    out += [md_table([f"sample ({name})" for name in priors], list(zip(*(ex["priors"][name] for name in priors)))), ""]

    ctl = report["control"]
    rows = ctl["per_layer"] + ctl["ranges"]
    cc = ctl.get("char_classes")
    out += [
        "## Multi-scale control",
        "",
        f"For each of {ctl['n_sentences']} sentences, the dims of one latent layer (or one --replace-dims range) are "
        f"redrawn {ctl['edits_per_sentence']} times from the `{ctl['prior']}` prior and each code is decoded greedily. "
        "Content kept / pattern kept: the share of the sentence's content (pattern) characters, as a multiset, "
        "still in the output. High content kept with a layer redrawn: the rest of the code keeps the topic; "
        "low: that layer carried it. `changed` counts outputs that differ from the unedited reconstruction.",
        "",
    ]
    if cc:
        out += [
            f"Content characters: IDF above the median over character occurrences ({fmt(cc['idf_threshold'])}) in "
            f"{' + '.join(f'`{c}`' for c in cc['corpora'])} ({cc['n_documents']} sentences), punctuation and symbols "
            f"excluded: {cc['n_content']} of {cc['n_chars']} characters; the rest are pattern. "
            f"{ctl['n_without_content']} sentences have no content character and {ctl['n_without_pattern']} no pattern "
            "character; each is left out of that average.",
            "",
        ]
    if ctl.get("note"):
        out += [ctl["note"] + ".", ""]
    u = ctl["unedited"]
    out += [
        md_table(
            ["edit", "dims", "char F1", "content kept", "pattern kept", "edit distance", "changed"],
            [
                (
                    "none (greedy reconstruction)",
                    "",
                    u["char_f1"],
                    u["content_kept"],
                    u["pattern_kept"],
                    u["edit_distance"],
                    0.0,
                )
            ]
            + [
                (
                    row["name"],
                    row["dims"],
                    row["char_f1"],
                    row["content_kept"],
                    row["pattern_kept"],
                    row["edit_distance"],
                    row["changed"],
                )
                for row in rows
            ],
        ),
        "",
    ]
    lvt = ctl["lowest_vs_top"]
    if lvt:
        out += [
            md_table(
                ["redrawn", "content kept", "pattern kept"],
                [
                    (f"lowest ({lvt['lowest']})", lvt["content_kept"]["lowest"], lvt["pattern_kept"]["lowest"]),
                    (f"top ({lvt['top']})", lvt["content_kept"]["top"], lvt["pattern_kept"]["top"]),
                    ("lowest − top", lvt["content_kept"]["diff"], lvt["pattern_kept"]["diff"]),
                ],
            ),
            "",
            "The reference's author saw the top layers carry the content: redrawing the lowest layer would then keep "
            "more content (a positive content difference) while both keep the pattern.",
            "",
        ]
    if report["plots"].get("control"):
        out += [f"![control]({report['plots']['control']})", ""]
    names = [row["name"] for row in rows]
    out += [
        md_table(
            ["sentence", "reconstruction", *names],
            [(e["text"], e["reconstruction"], *(e["edits"][n] for n in names)) for e in ex["control"]],
        ),
        "",
    ]

    it = report["interpolation"]
    out += [
        "## Interpolation",
        "",
        f"{it['n_paths']} paths of {it['steps']} steps between the codes of successive pairs of sentences (slerp per vMF layer); mean normalised "
        f"edit distance between successive outputs: {fmt(it['step_edit_distance'])} (lower = smoother).",
        "",
    ]
    for e in ex["interpolation"][:2]:
        out += [
            f"{e['a']} → {e['b']}",
            "",
            md_table(["t", "output"], [(f"{i / (len(e['path']) - 1):.2f}", x) for i, x in enumerate(e["path"])]),
            "",
        ]

    ds = report.get("downstream") or {}
    out += ["## Downstream", ""]
    if ds.get("transfer"):
        tr = ds["transfer"]
        out += [
            f"Attribute transfer: {tr['n_inputs']} held-out negative reviews ({tr['n_held_out_inputs']} never trained on) "
            f"moved towards the positive ones ({tr['method']} direction between {tr['n_from']} / {tr['n_to']} train-split "
            f"reviews of each label), judged by snownlp's sentiment classifier; char F1 with the input. The inputs "
            f"themselves are judged positive {fmt(tr['inputs_positive'])}.",
            "",
            md_table(
                ["", "judged positive", "char F1 with input"],
                [
                    ("reconstruction (strength 0)", tr["baseline_positive"], tr["baseline_char_f1"]),
                    (f"transfer, strength {tr['strength']:g}", tr["positive"], tr["char_f1"]),
                ],
            ),
            "",
            md_table(["input", "output"], [(e["input"], e["output"]) for e in tr["examples"]]),
            "",
        ]
    if ds.get("augmentation"):
        au = ds["augmentation"]
        out += [
            f"Augmentation check (one seed; bench/augment.py measures over seeds): a char 1-2-gram TF-IDF + logistic "
            f"regression on {au['n']} labelled reviews, accuracy on {au['n_test']} others ({au['n_test_held_out']} held out).",
            "",
            md_table(
                ["training rows", "accuracy"],
                [
                    (f"{au['n']} reviews", au["baseline"]),
                    ("each repeated (copies)", au["copies"]),
                    (f"+ {au['n_variants']} variants", au["augmented"]),
                ],
            ),
            "",
        ]
    if ds.get("note"):
        out += [ds["note"] + ".", ""]
    out += ["## Training curves", ""]
    tr = report["training"]
    if tr is None:
        out += ["No metrics.jsonl beside or above the checkpoint.", ""]
    else:
        out += [f"From `{tr['metrics_file']}`, last step {fmt(tr['last_step'])}.", ""]
        if report["plots"].get("training_curves"):
            out += [f"![training curves]({report['plots']['training_curves']})", ""]
    if report["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out))


def clean_json(x):
    """NaN/inf -> null (JSON has no NaN), tuples -> lists, recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    return x


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Evaluate a UniVAE checkpoint: report.json, report.md and plots in --out.")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. runs/default/last)")
    p.add_argument(
        "--data",
        default=None,
        help="sentence file, or CORPUS:SPLIT such as builtin:reviews:test "
        "(default: the test split of the checkpoint's training corpus, else builtin:reviews:test)",
    )
    p.add_argument("--out", default=None, help="output directory (default: CHECKPOINT/eval)")
    p.add_argument("--max-sentences", type=int, default=500, help="evaluate the first N sentences of the set")
    p.add_argument("--beam-size", type=int, default=4)
    p.add_argument("--iw-samples", type=int, default=100, help="importance samples per sentence (Optimus: 100)")
    p.add_argument(
        "--iw-sentences", type=int, default=100, help="sentences for the IW NLL (the first N; 0 = all evaluated)"
    )
    p.add_argument(
        "--au-delta", type=float, default=0.01, help="active-unit threshold on Var_x(E_q[z_d]) (Burda et al.)"
    )
    p.add_argument("--n-samples", type=int, default=1000, help="prior samples")
    p.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="prior samples: sample tokens at this temperature (default greedy)",
    )
    p.add_argument("--top-k", type=int, default=None, help="prior samples: top-k sampling")
    p.add_argument("--top-p", type=float, default=None, help="prior samples: nucleus sampling")
    p.add_argument(
        "--replace-dims",
        action="append",
        default=[],
        metavar="RANGES",
        help="extra control rows, e.g. 0:32 or 0:16,48:64 (repeatable)",
    )
    p.add_argument(
        "--control-sentences", type=int, default=100, help="multi-scale control: edit the first N evaluated sentences"
    )
    p.add_argument("--control-edits", type=int, default=3, help="multi-scale control: redraws per sentence and range")
    p.add_argument("--interp-paths", type=int, default=20, help="interpolation paths")
    p.add_argument("--interp-steps", type=int, default=8, help="points per path, ends included")
    p.add_argument("--n-examples", type=int, default=5, help="examples per section in report.md")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    args = p.parse_args(argv)
    for name in (
        "max_sentences",
        "beam_size",
        "iw_samples",
        "n_samples",
        "batch_size",
        "control_sentences",
        "control_edits",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("iw_sentences", "interp_paths", "n_examples"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    if args.interp_steps < 2:
        p.error("--interp-steps must be at least 2")
    return args


def prepare(args):
    """Load the checkpoint and the data and check the flags: every user error surfaces here, before any
    decoding. Returns what run() needs."""
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    model = UniVAE.from_pretrained(args.checkpoint).to(device).eval()
    c = model.config
    train_args = read_train_args(args.checkpoint)
    spec = args.data or (
        f"{train_args['corpus']}:test" if train_args and train_args.get("corpus") else "builtin:reviews:test"
    )
    texts_all, source, train_texts, notes = load_data(spec, c.maxlen, train_args)
    ranges = [(f"layer {l}", l, layer_span(model, j)) for j, l in enumerate(c.latent_layers)]
    for dims in args.replace_dims:
        parse_dims(dims, edit_size(model))
        ranges.append((f"dims {dims}", None, dims))
    return dict(
        model=model,
        device=device,
        train_args=train_args,
        spec=spec,
        source=source,
        texts_all=texts_all,
        train_texts=train_texts,
        notes=notes,
        ranges=ranges,
    )


def run(args, model, device, train_args, spec, source, texts_all, train_texts, notes, ranges):
    """Every section; writes report.json, report.md and the plots in --out. Returns (report, out dir)."""
    t0 = time.time()
    c = model.config
    texts = texts_all[: args.max_sentences]
    ids, n_truncated, n_unk = encode_texts(model.tokenizer, texts, c.maxlen, warn=False)
    decoding = {
        k: v
        for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p))
        if v is not None
    }
    out_dir = args.out or os.path.join(args.checkpoint, "eval")
    os.makedirs(out_dir, exist_ok=True)
    n_examples = args.n_examples

    report = {
        "checkpoint": {
            "path": args.checkpoint,
            "step": checkpoint_step(args.checkpoint),
            "config": c.to_dict(),
            "train_args": train_args,
        },
        "data": {
            "spec": spec,
            "source": source,
            "n_sentences": len(texts),
            "n_available": len(texts_all),
            "n_truncated": n_truncated,
            "n_unk_tokens": n_unk,
            "mean_length": metrics.mean(len(metrics.strip_ws(t)) for t in texts),
            "round_trip_exact_match": metrics.mean(
                metrics.exact_match(detokenize(model.tokenizer, row.tolist()), t) for row, t in zip(ids, texts)
            ),
        },
        "settings": {
            "max_sentences": args.max_sentences,
            "beam_size": args.beam_size,
            "iw_samples": args.iw_samples,
            "iw_sentences": min(args.iw_sentences or len(texts), len(texts)),
            "au_delta": args.au_delta,
            "n_samples": args.n_samples,
            "prior_decoding": decoding or "greedy",
            "replace_dims": args.replace_dims,
            "control_sentences": min(args.control_sentences, len(texts)),
            "control_edits": args.control_edits,
            "interp_paths": args.interp_paths,
            "interp_steps": args.interp_steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "device": str(device),
        },
        "notes": notes,
    }
    examples = {}
    with torch.no_grad(), warnings.catch_warnings():
        # encode_texts warns about over-long sentences at every call; data.n_truncated counts them once
        warnings.filterwarnings("ignore", message=r".*longer than maxlen.*truncated")
        # each stochastic section gets its own seed, so one's draws do not depend on another's
        torch.manual_seed(args.seed)
        report["reconstruction"], examples["reconstruction"], greedy = reconstruction_section(
            model, texts, args.beam_size, args.batch_size, n_examples
        )
        torch.manual_seed(args.seed + 1)
        report["likelihood"], report["latent"] = likelihood_and_latent_sections(
            model, ids, texts, args.iw_samples, report["settings"]["iw_sentences"], args.batch_size, args.au_delta
        )
        # the uniform prior keeps the seed the single prior block had; the fitted one gets the next free one
        report["prior"], examples["priors"], samples = prior_section(
            model,
            args.n_samples,
            texts,
            train_texts,
            dict(decoding, batch_size=args.batch_size),
            n_examples,
            seeds={"uniform": args.seed + 2, "fitted": args.seed + 5},
        )
        examples["prior"] = examples["priors"][report["prior"]["default"]]
        torch.manual_seed(args.seed + 3)
        classes, note = char_classes_or_note()
        n_control = report["settings"]["control_sentences"]
        report["control"], rows, examples["control"] = control_section(
            model,
            texts[:n_control],
            greedy[:n_control],
            ranges,
            args.control_edits,
            classes,
            args.batch_size,
            n_examples,
        )
        if note:
            report["control"]["note"] = note
        torch.manual_seed(args.seed + 4)
        report["interpolation"], paths = interpolation_section(model, texts, args.interp_paths, args.interp_steps)
        examples["interpolation"] = paths[:n_examples]
        report["downstream"] = downstream_section(model, train_args, args.seed, args.batch_size)
    report["training"], curves = training_section(args.checkpoint)

    plots = {"control": "control.png", "lengths": "lengths.png", "training_curves": None}
    plot_control(rows, report["control"]["unedited"]["char_f1"], os.path.join(out_dir, plots["control"]))
    plot_lengths(texts, samples, c.maxlen, os.path.join(out_dir, plots["lengths"]))
    if curves is not None and (curves[0] or curves[1]):
        plots["training_curves"] = "training_curves.png"
        plot_training_curves(*curves, os.path.join(out_dir, plots["training_curves"]))
    report["plots"] = plots
    report["examples"] = examples
    report["seconds"] = time.time() - t0
    report = clean_json(report)

    with open(os.path.join(out_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
    write_markdown(report, os.path.join(out_dir, "report.md"))
    return report, out_dir


def main(argv=None):
    args = parse_args(argv)
    try:
        context = prepare(args)
    except (
        ValueError,
        FileNotFoundError,
    ) as e:  # bad checkpoint, corpus or --replace-dims; CorpusError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    report, out_dir = run(args, **context)
    print(md_table(["metric", "value"], headline_rows(report)))
    print(f"\nwrote {os.path.join(out_dir, 'report.json')}, report.md and plots ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
