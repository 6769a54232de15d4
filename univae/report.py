"""The evaluation report rendered: report.md from report.json's dict, one function per section.
Nothing here measures: univae.measure does; univae.evaluate runs both (and univae.plots for the PNGs).
"""

import json
import math
from types import SimpleNamespace

from univae import metrics
from univae.headline import PRIOR_NAMES, at, config_latent_layers, fmt, headline_rows, md_table
from univae.latents import family_class

# ----------------------------------------------------------------------------- report.md: the sections


def render_markdown(report):
    """report.json's dict -> report.md's text: one section after another."""
    sections = (
        headline_md,
        checkpoint_md,
        data_md,
        reconstruction_md,
        likelihood_md,
        latent_md,
        codebook_md,
        mixture_md,
        prior_md,
        control_md,
        interpolation_md,
        downstream_md,
        training_md,
        notes_md,
    )
    return "\n".join(line for section in sections for line in section(report))


def headline_md(report):
    return [
        f"# UniVAE evaluation: `{report['checkpoint']['path']}`",
        "",
        "## Headline",
        "",
        md_table(["metric", "value"], headline_rows(report)),
        "",
    ]


def checkpoint_md(report):
    c = report["checkpoint"]
    config = c["config"]
    family = family_class(config["latent"]).describe(SimpleNamespace(**config))
    out = [
        "## Checkpoint",
        "",
        f"Step {fmt(c['step'])}. {config['model_type']}, {config['num_hidden_layers']} layers x {config['hidden_size']}, "
        f"{config['num_latent_layers']} latent layers x {config['z_dim']} dims ({config['latent']}"
        + (f", {family}" if family else "")
        + f"), maxlen {config['maxlen']}, vocab {config['vocab_size']}.",
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
    return out


def data_md(report):
    d = report["data"]
    return [
        "## Data",
        "",
        f"{d['source']}: {d['n_sentences']} sentences evaluated of {d['n_available']}, mean length "
        f"{fmt(d['mean_length'], 1)} chars; {d['n_truncated']} longer than maxlen, {d['n_unk_tokens']} [UNK] tokens. "
        f"{fmt(d['round_trip_exact_match'])} of the sentences survive the tokeniser's round trip unchanged "
        "(the ceiling of exact match).",
        "",
    ]


def reconstruction_md(report):
    r, s = report["reconstruction"], report["settings"]
    return [
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
            [(e["text"], e["greedy"], e["beam"]) for e in report["examples"]["reconstruction"]],
        ),
        "",
    ]


def likelihood_md(report):
    lk, s = report["likelihood"], report["settings"]
    return [
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
    ]


def latent_md(report):
    lt, s, d = report["latent"], report["settings"], report["data"]
    config = report["checkpoint"]["config"]
    return [
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
    ] + ([f"**{lt['warning']}**", ""] if lt.get("warning") else [])


def codebook_md(report):
    cb, config = report["latent"].get("codebook"), report["checkpoint"]["config"]
    if not cb:
        return []
    return [
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


def mixture_md(report):
    mx, config = report["latent"].get("mixture"), report["checkpoint"]["config"]
    if not mx:
        return []
    head = ["latent layer", "component usage", "usage entropy", "I(x; c)", "dispersion", "mean spread", "mean std"]
    rows = [
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
    ]
    return [
        md_table(head, rows),
        "",
        f"Usage is mean_x q(c|x) over the evaluated sentences (entropy at most log K = "
        f"{fmt(math.log(config['mixture_components']), 2)} nats); the spread is the mean pairwise distance between "
        "component means, next to the components' root-mean variance.",
        "",
    ]


PRIOR_COLUMNS = (
    ("distinct-1", "distinct_1"),
    ("distinct-2", "distinct_2"),
    ("self-BLEU", "self_bleu"),
    ("novelty", "novelty"),
    ("first char plausible", "first_char_plausibility"),
    ("ratio to data", "first_char_ratio"),
    ("ended with [SEP]", "ended_with_sep"),
    ("mean length", "mean_length"),
)


def prior_md(report):
    p, s = report["prior"], report["settings"]
    priors = [name for name in PRIOR_NAMES if p.get(name)]
    data_row = [  # the held-out sentences themselves: no novelty, ratio to data or [SEP] to speak of
        f"held-out sentences ({p['data_n']})",
        p["data_distinct_1"],
        p["data_distinct_2"],
        p["data_self_bleu"],
        None,
        p["data_first_char_plausibility"],
        None,
        None,
        p["data_mean_length"],
    ]
    out = [
        "## Prior samples",
        "",
        f"{p['n_samples']} sentences decoded from draws of each prior ({s['prior_decoding']} decoding): `uniform` is the "
        "training prior the KL is measured against, `fitted` the density fitted to the training set's posterior codes. "
        f"The default (what sample.py draws from) is `{p['default']}`. A first character is plausible when it is "
        f"among the {metrics.FIRST_CHARS} most frequent first characters of the training sentences; the ratio divides the "
        "samples' share by the held-out sentences'.",
        "",
        md_table(
            ["prior"] + [title for title, _ in PRIOR_COLUMNS],
            [[name] + [p[name][key] for _, key in PRIOR_COLUMNS] for name in priors] + [data_row],
        ),
        "",
    ]
    if p.get("note"):
        out += [p["note"] + ".", ""]
    if report["plots"].get("lengths"):
        out += [f"![lengths]({report['plots']['lengths']})", ""]
    samples = report["examples"]["priors"]
    return out + [md_table([f"sample ({name})" for name in priors], list(zip(*(samples[name] for name in priors)))), ""]


def control_md(report):
    ctl = report["control"]
    cc = ctl.get("char_classes")
    out = [
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
    return out + control_tables_md(report)


CONTROL_COLUMNS = ("char_f1", "content_kept", "pattern_kept", "edit_distance")


def control_tables_md(report):
    ctl = report["control"]
    rows, u = ctl["per_layer"] + ctl["ranges"], ctl["unedited"]
    out = [
        md_table(
            ["edit", "dims", "char F1", "content kept", "pattern kept", "edit distance", "changed"],
            [("none (greedy reconstruction)", "", *(u[key] for key in CONTROL_COLUMNS), 0.0)]
            + [(row["name"], row["dims"], *(row[key] for key in CONTROL_COLUMNS), row["changed"]) for row in rows],
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
    examples = report["examples"]["control"]
    return out + [
        md_table(
            ["sentence", "reconstruction", *names],
            [(e["text"], e["reconstruction"], *(e["edits"][n] for n in names)) for e in examples],
        ),
        "",
    ]


def interpolation_md(report):
    it = report["interpolation"]
    out = [
        "## Interpolation",
        "",
        f"{it['n_paths']} paths of {it['steps']} steps between the codes of successive pairs of sentences (slerp per vMF layer); mean normalised "
        f"edit distance between successive outputs: {fmt(it['step_edit_distance'])} (lower = smoother).",
        "",
    ]
    for e in report["examples"]["interpolation"][:2]:
        out += [
            f"{e['a']} → {e['b']}",
            "",
            md_table(["t", "output"], [(f"{i / (len(e['path']) - 1):.2f}", x) for i, x in enumerate(e["path"])]),
            "",
        ]
    return out


def downstream_md(report):
    ds = report.get("downstream") or {}
    out = ["## Downstream", ""]
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
    return out


def training_md(report):
    out = ["## Training curves", ""]
    tr = report["training"]
    if tr is None:
        return out + ["No metrics.jsonl beside or above the checkpoint.", ""]
    out += [f"From `{tr['metrics_file']}`, last step {fmt(tr['last_step'])}.", ""]
    if report["plots"].get("training_curves"):
        out += [f"![training curves]({report['plots']['training_curves']})", ""]
    return out


def notes_md(report):
    if not report["notes"]:
        return []
    return ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]


def clean_json(x):
    """NaN/inf -> null (JSON has no NaN), tuples -> lists, recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    return x
