"""sample.py's output as tables: one printer per mode, (records, args, model, out) -> lines on `out`,
and the --augment JSONL grouping. The records are univae.sample_modes' dicts."""

import collections
import unicodedata

from univae import edit_dims


def _width(s):
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)


def _table(header, rows, out):
    widths = [max(_width(str(r[i])) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        cells = [str(c) + " " * (w - _width(str(c))) for c, w in zip(r, widths)]
        print("  ".join([*cells, str(r[-1])]).rstrip(), file=out)


def show_samples(records, args, model, out):
    _table(["#", "output"], [[r["index"], r["output"]] for r in records], out)


def show_pairs(records, args, model, out):
    _table(["input", "output"], [[r["input"], r["output"]] for r in records], out)


def show_transfer(records, args, model, out):
    print(
        f"moved from {args.transfer[0]} towards {args.transfer[1]} ({args.direction} direction, strength "
        f"{args.strength:g})",
        file=out,
    )
    show_pairs(records, args, model, out)


def _edit_groups(records):
    """[(sentence, Counter of its variants in first-drawn order)] of edit records, n per sentence."""
    groups = []
    for r in records:
        if r["index"] == 0:
            groups.append((r["input"], collections.Counter()))
        groups[-1][1][r["output"]] += 1
    return groups


def show_edits(records, args, model, out):
    """What was replaced once, then each sentence with its variants indented below it."""
    r0 = records[0]
    what = f"{edit_dims.edit_unit(model)} {r0['replace_dims']} of {edit_dims.edit_size(model)}"
    source = {"fitted": "the fitted prior's conditional given the kept dims", "uniform": "the training prior"}
    print(
        f"replaced {what} (latent layers {', '.join(map(str, r0['latent_layers']))}; 0 = lowest), "
        f"redrawn from {source[r0['prior']]}",
        file=out,
    )
    if args.held_out_source:
        print(f"sentences: {args.held_out_source}", file=out)
    for text, variants in _edit_groups(records):
        print(f"\n{text}", file=out)
        for variant, k in variants.items():  # a variant drawn k > 1 times is shown once, with its count
            print(f"    {variant}" + (f"  (×{k})" if k > 1 else ""), file=out)


def show_codes(records, args, model, out):
    print(f"codes: {' '.join(map(str, records[0]['codes']))}", file=out)
    show_samples(records, args, model, out)


def show_path(records, args, model, out):
    _table(["alpha", "output"], [[f"{r['alpha']:.2f}", r["output"]] for r in records], out)


def show_analogy(records, args, model, out):
    a, b, c = records[0]["input"]
    print(f"{a} : {b} :: {c} : ?", file=out)
    _table(["#", "output"], [["=" if r["index"] == 0 else r["index"], r["output"]] for r in records], out)


def show_augment(records, args, model, out):
    rows, last = [], None
    for r in records:
        rows.append(
            ["" if r["input_index"] == last else r["input"], "(no new variant)" if r["output"] is None else r["output"]]
        )
        last = r["input_index"]
    _table(["input", "variants"], rows, out)


def augment_groups(records):
    """Per-variant records -> one {"input", "outputs"} per input line, in input order."""
    groups = {}
    for r in records:
        g = groups.setdefault(r["input_index"], {"input": r["input"], "outputs": []})
        if r["output"] is not None:
            g["outputs"].append(r["output"])
    return list(groups.values())
