"""The report's headline: the one table that opens report.md and that `python -m univae.evaluate`
prints, one small function per part it summarises; and the number and table formatting that
report.md's sections (univae.report) share with it."""

import math

PRIOR_NAMES = ("uniform", "fitted")  # the report's prior blocks, in this order


# ----------------------------------------------------------------------------- report.md: the pieces


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


def fmt_list(xs, digits=3):
    return ", ".join(fmt(x, digits) for x in xs)


def headline_rows(report):
    """The headline table's (metric, value) rows, in the order of the sections below them; the latent family's
    own rows (codebook, mixture) come last."""
    return [
        *reconstruction_rows(report),
        *likelihood_rows(report),
        *prior_rows(report),
        *control_rows(report),
        ("interpolation: step edit distance", fmt(report["interpolation"]["step_edit_distance"])),
        *downstream_rows(report),
        *latent_family_rows(report),
    ]


def reconstruction_rows(report):
    r = report["reconstruction"]
    decodings = (("greedy", "greedy"), ("beam", f"beam {report['settings']['beam_size']}"))
    return [
        (
            f"reconstruction, {label}: exact / char F1 / char BLEU",
            f"{fmt(r[key]['exact_match'])} / {fmt(r[key]['char_f1'])} / {fmt(r[key]['char_bleu'], 1)}",
        )
        for key, label in decodings
    ]


def likelihood_rows(report):
    lk, lt = report["likelihood"], report["latent"]
    config = report["checkpoint"]["config"]
    return [
        ("CE / bits per char (posterior mean)", f"{fmt(lk['ce'])} / {fmt(lk['bits_per_char'])}"),
        (f"IW NLL / PPL (K={report['settings']['iw_samples']})", f"{fmt(lk['iw_nll'], 2)} / {fmt(lk['iw_ppl'], 2)}"),
        (
            "latent: KL (per layer) / MI / active units",
            f"{fmt(lt['kl'], 2)} ({fmt_list(lt['kl_per_layer'], 2)}) / {fmt(lt['mi'])} / "
            f"{fmt(lt['au'])} of {config['num_latent_layers'] * config['z_dim']}",
        ),
    ]


def prior_rows(report):
    """Two rows for each prior that was sampled."""
    pr = report["prior"]
    rows = []
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
    return rows


def control_rows(report):
    ctl = report["control"]
    per_layer = lambda key: fmt_list(row[key] for row in ctl["per_layer"])
    return [
        (f"control ({ctl['prior']} prior): char F1 with a layer redrawn (lowest first)", per_layer("char_f1")),
        (
            "control: content kept / pattern kept with a layer redrawn (lowest first)",
            f"{per_layer('content_kept')} / {per_layer('pattern_kept')}",
        ),
    ]


def downstream_rows(report):
    """A row for each downstream trial that was run (attribute transfer, augmentation)."""
    ds = report.get("downstream") or {}
    tr, au = ds.get("transfer"), ds.get("augmentation")
    rows = []
    if tr:
        label = f"transfer neg → pos (strength {tr['strength']:g}): judged positive / char F1 (reconstruction)"
        value = f"{fmt(tr['positive'])} / {fmt(tr['char_f1'])} ({fmt(tr['baseline_positive'])} / {fmt(tr['baseline_char_f1'])})"
        rows.append((label, value))
    if au:
        label = f"augmentation check, N={au['n']}: accuracy baseline / copies / augmented"
        rows.append((label, f"{fmt(au['baseline'])} / {fmt(au['copies'])} / {fmt(au['augmented'])}"))
    return rows


def latent_family_rows(report):
    """The codebook's row (vq) and the mixture's row (mixture families), when the latent has them."""
    cb, mx = report["latent"].get("codebook"), report["latent"].get("mixture")
    rows = []
    if cb:
        value = f"{fmt_list(cb['perplexity'], 1)} / {fmt_list(cb['used_fraction'], 3)}"
        rows.append(("codebook (per layer): perplexity / used fraction", value))
    if mx:
        label = "mixture (per layer): component usage entropy / I(x; c) / mean spread"
        value = f"{fmt_list(mx['usage_entropy'], 2)} / {fmt_list(mx['mi_c'], 2)} / {fmt_list(mx['mean_spread'], 2)}"
        rows.append((label, value))
    return rows


def at(xs, j):
    return xs[j] if xs is not None else None


def config_latent_layers(config):
    L, n = config["num_hidden_layers"], config["num_latent_layers"]
    return list(range(L - n, L))
