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
| `latent.mi_max`, `.warning` | log N, the most the MI estimate can show over N sentences; the collapse warning train.py would print for these numbers (a layer with MI under 10% of log N, among others; univae.diagnostics.collapse_warning), absent when there is none |
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

import json
import os
import sys
import time
import warnings

import torch

from univae import measure, metrics
from univae.checkpoint import write_atomically
from univae.cli import CLIError, Parser
from univae.cli import report as report_error
from univae.edit_dims import edit_size, layer_span, parse_dims
from univae.headline import headline_rows, md_table
from univae.model import UniVAE
from univae.plots import plot_control, plot_lengths, plot_training_curves
from univae.report import clean_json, render_markdown
from univae.rundir import checkpoint_step, read_train_args
from univae.tokenizer import detokenize, encode_texts

PROG = "univae.evaluate"
SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = Parser(prog=PROG, description="Evaluate a UniVAE checkpoint: report.json, report.md and plots in --out.")
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
    check_counts(args)
    return args


def check_counts(args):
    """Counts that must be positive (or at least 0, or 2) are: a bad one raises CLIError."""
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
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("iw_sentences", "interp_paths", "n_examples"):
        if getattr(args, name) < 0:
            raise CLIError(f"--{name.replace('_', '-')} must not be negative")
    if args.interp_steps < 2:
        raise CLIError("--interp-steps must be at least 2")


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
    texts_all, source, train_texts, notes = measure.load_data(spec, c.maxlen, train_args)
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
    texts = texts_all[: args.max_sentences]
    ids, n_truncated, n_unk = encode_texts(model.tokenizer, texts, model.config.maxlen, warn=False)
    decoding = {
        k: v
        for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p))
        if v is not None
    }
    report = {
        "checkpoint": {
            "path": args.checkpoint,
            "step": checkpoint_step(args.checkpoint),
            "config": model.config.to_dict(),
            "train_args": train_args,
        },
        "data": data_summary(model, spec, source, texts, texts_all, ids, n_truncated, n_unk),
        "settings": settings(args, device, len(texts), decoding),
        "notes": notes,
    }
    with torch.no_grad(), warnings.catch_warnings():
        # encode_texts warns about over-long sentences at every call; data.n_truncated counts them once
        warnings.filterwarnings("ignore", message=r".*longer than maxlen.*truncated")
        drawn = measure_sections(args, model, report, texts, ids, train_texts, ranges, decoding)
    report["training"], curves = measure.training_section(args.checkpoint)
    out_dir = args.out or os.path.join(args.checkpoint, "eval")
    os.makedirs(out_dir, exist_ok=True)
    report["plots"] = draw_plots(out_dir, report, texts, curves, model.config.maxlen, **drawn)
    report["seconds"] = time.time() - t0
    report = clean_json(report)
    write_atomically(os.path.join(out_dir, "report.json"), write_text(json.dumps(report, indent=2, ensure_ascii=False)))
    write_atomically(os.path.join(out_dir, "report.md"), write_text(render_markdown(report)))
    return report, out_dir


def data_summary(model, spec, source, texts, texts_all, ids, n_truncated, n_unk):
    return {
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
    }


def settings(args, device, n_texts, decoding):
    """The flags the report was made with (report.json's `settings`)."""
    return {
        "max_sentences": args.max_sentences,
        "beam_size": args.beam_size,
        "iw_samples": args.iw_samples,
        "iw_sentences": min(args.iw_sentences or n_texts, n_texts),
        "au_delta": args.au_delta,
        "n_samples": args.n_samples,
        "prior_decoding": decoding or "greedy",
        "replace_dims": args.replace_dims,
        "control_sentences": min(args.control_sentences, n_texts),
        "control_edits": args.control_edits,
        "interp_paths": args.interp_paths,
        "interp_steps": args.interp_steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "device": str(device),
    }


def measure_sections(args, model, report, texts, ids, train_texts, ranges, decoding):
    """The measured sections into `report` and their examples into report["examples"]; returns what
    the plots draw besides (the control rows, the prior samples)."""
    examples, n_examples, batch_size = {}, args.n_examples, args.batch_size
    # each stochastic section gets its own seed, so one's draws do not depend on another's
    torch.manual_seed(args.seed)
    report["reconstruction"], examples["reconstruction"], greedy = measure.reconstruction_section(
        model, texts, args.beam_size, batch_size, n_examples
    )
    torch.manual_seed(args.seed + 1)
    report["likelihood"], report["latent"] = measure.likelihood_and_latent_sections(
        model, ids, texts, args.iw_samples, report["settings"]["iw_sentences"], batch_size, args.au_delta
    )
    # the uniform prior keeps the seed the single prior block had; the fitted one gets the next free one
    report["prior"], examples["priors"], samples = measure.prior_section(
        model,
        args.n_samples,
        texts,
        train_texts,
        dict(decoding, batch_size=batch_size),
        n_examples,
        seeds={"uniform": args.seed + 2, "fitted": args.seed + 5},
    )
    examples["prior"] = examples["priors"][report["prior"]["default"]]
    torch.manual_seed(args.seed + 3)
    classes, note = measure.char_classes_or_note()
    n = report["settings"]["control_sentences"]
    report["control"], rows, examples["control"] = measure.control_section(
        model, texts[:n], greedy[:n], ranges, args.control_edits, classes, batch_size, n_examples
    )
    if note:
        report["control"]["note"] = note
    torch.manual_seed(args.seed + 4)
    report["interpolation"], paths = measure.interpolation_section(model, texts, args.interp_paths, args.interp_steps)
    examples["interpolation"] = paths[:n_examples]
    report["downstream"] = measure.downstream_section(model, report["checkpoint"]["train_args"], args.seed, batch_size)
    report["examples"] = examples
    return {"control_rows": rows, "samples": samples}


def draw_plots(out_dir, report, texts, curves, maxlen, control_rows, samples):
    """The PNGs beside report.md -> report.json's `plots` (file names; None where there was nothing to draw)."""
    plots = {"control": "control.png", "lengths": "lengths.png", "training_curves": None}
    plot_control(control_rows, report["control"]["unedited"]["char_f1"], os.path.join(out_dir, plots["control"]))
    plot_lengths(texts, samples, maxlen, os.path.join(out_dir, plots["lengths"]))
    if curves is not None and (curves[0] or curves[1]):
        plots["training_curves"] = "training_curves.png"
        plot_training_curves(*curves, os.path.join(out_dir, plots["training_curves"]))
    return plots


def write_text(text):
    """A writer for checkpoint.write_atomically: text into the file it is handed."""

    def write(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    return write


def main(argv=None):
    try:
        args = parse_args(argv)
        context = prepare(args)
    except (CLIError, ValueError, FileNotFoundError) as e:  # a bad flag, checkpoint, corpus or --replace-dims
        return report_error(PROG, e)
    report, out_dir = run(args, **context)
    print(md_table(["metric", "value"], headline_rows(report)))
    print(f"\nwrote {os.path.join(out_dir, 'report.json')}, report.md and plots ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
