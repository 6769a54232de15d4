"""Sample, reconstruct, edit, interpolate, analogise and augment sentences with a trained UniVAE.

    python sample.py --n 10                                    random sentences from the prior
    python sample.py --reconstruct "句子" ...                    or --input FILE (one per line, - for stdin)
    python sample.py --text "牙龈出血要吃什么药？" --replace-dims 0:32 --n 6
                                                               redraw latent dims, keep the others exactly;
                                                               ranges over the full code, several allowed
                                                               (0:16,48:64), negative ones as --replace-dims=-16:
    python sample.py --replace-dims 0:32                       the same for the first 5 sentences of the
                                                               test split of the checkpoint's own corpus
                                                               (train_args.json; reloaded as univae.evaluate
                                                               does); --input FILE edits every line of FILE
    python sample.py --interpolate "A" "B" --steps 6           slerp per vMF layer, ends included
                                                               (vq: linear, snapped to the nearest codes)
    python sample.py --codes "12 7 301 5"                      --latent vq: decode one code per latent
                                                               layer (--json --reconstruct shows codes);
                                                               --replace-dims then counts code positions
    python sample.py --n 5 --component 2                       --latent gmm: prior draws from component 2
    python sample.py --analogy "A" "B" "C" --n 3               z_C + z_B - z_A, then n-1 codes around it
    python sample.py --augment FILE --n K [--out FILE]         K variants per line from posterior-style
                                                               samples (--spread scales the noise), each
                                                               keeping a random start of the line (--keep-start), as
                                                               JSONL {"input", "outputs"}; --candidates M
                                                               --rank round_trip|overlap: decode M x K, keep
                                                               the K closest to the sentence
    python sample.py --transfer FROM_FILE TO_FILE --input FILE [--strength S]
                                                               move each line of FILE from the attribute of
                                                               FROM_FILE's sentences to TO_FILE's (e.g. neg.txt
                                                               pos.txt) along the difference of their mean codes
                                                               (--direction probe: a linear probe's normal);
                                                               strength 0 = the reconstruction;
                                                               --json rows {"input", "output"} in input order

Prior draws and --replace-dims edits come from the checkpoint's fitted prior when it has one
(prior.safetensors: a Gaussian mixture fitted to the training sentences' posterior codes; an edit
redraws the chosen dims from its conditional given the kept ones; `python -m univae.prior
--checkpoint DIR` fits one), else from the training prior (uniform on each vMF sphere, N(0, I),
uniform vq codes, the gmm's own mixture). --prior fitted|uniform chooses; --component always draws
from the training prior's mixture.

Decoding is greedy unless told otherwise: --beam-size K (length penalty --length-penalty, GNMT's
alpha), or sampling with --temperature / --top-k / --top-p (or --do-sample); --no-repeat-ngram N;
--seed makes every draw reproducible; --compile runs the one-token step through torch.compile
(CUDA graphs on CUDA; one compile per batch shape, seconds each). --json prints one JSON
object per output line on stdout and nothing else; warnings go to stderr. Errors are one line on
stderr and a non-zero exit.
"""

import contextlib
import json
import os
import sys
import warnings

from univae import sample_flags, sample_modes
from univae.cli import CLIError, report
from univae.sample_modes import check_args


def build_parser():
    return sample_flags.build_parser(__doc__, sample_modes.DEFAULT_N)


def print_records(mode, records, args, model, jsonl_file):
    """One pass's records on stdout: --json lines, or the mode's table; a mode with its own JSONL
    (--augment) writes it to jsonl_file (--out's), or prints it instead of the table when there is
    neither --out nor --json. -> the JSONL lines written to jsonl_file."""
    written = 0
    if mode.jsonl and (args.out or not args.json):
        lines = "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in mode.jsonl(records))
        if not args.out:
            sys.stdout.write(lines)  # no --out, no --json: the JSONL itself is the output
            return 0
        jsonl_file.write(lines)
        written = lines.count("\n")
    if args.json:
        for r in records:
            if r["output"] is not None:
                print(json.dumps(r, ensure_ascii=False))
    else:
        mode.show(records, args, model, sys.stdout)
    return written


@contextlib.contextmanager
def jsonl_output(mode, args):
    """--out's file for a mode's JSONL, written as OUT.tmp and renamed to OUT when every pass is done:
    a failure leaves no half-written OUT. None when there is no such file."""
    if not (mode.jsonl and args.out):
        yield None
        return
    tmp = f"{args.out}.tmp"
    try:
        f = open(tmp, "w", encoding="utf-8")
    except OSError as e:
        raise CLIError(f"cannot write {args.out}: {e.strerror or e}") from None
    try:
        with f:
            yield f
        os.replace(tmp, args.out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        mode = check_args(args)
        model = sample_modes.load_model(args.checkpoint, args.device, args.attn)
        if mode.setup:  # before recording warnings, which are the run's own
            mode.setup(model, args)
        n_written = 0
        with warnings.catch_warnings(record=True) as caught, jsonl_output(mode, args) as jsonl_file:
            warnings.simplefilter("always")
            for records in sample_modes.run(model, mode, args):  # one pass, or one per chunk of a streamed file
                n_written += print_records(mode, records, args, model, jsonl_file)
        for w in caught:
            print(f"sample.py: warning: {w.message}", file=sys.stderr)
        if jsonl_file is not None:
            print(f"sample.py: wrote {n_written} lines to {args.out}", file=sys.stderr)
        return 0
    except CLIError as e:
        return report("sample.py", e)
    except BrokenPipeError:  # `python sample.py ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
