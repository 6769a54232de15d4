"""`python -m univae.prior`: fit the sampling density (univae/density.py) to a checkpoint's posterior
codes on the train split of its corpus.

    python -m univae.prior --checkpoint DIR [--components K] [--max-sentences N] [--seed S]

The corpus is reloaded and split as train.py split it (DIR/train_args.json), and DIR/prior.safetensors
is written atomically. From Python, `fit_prior(model, ids)` fits on any sentences.
"""

import os
import sys
import time

import torch

# the density's names stay importable from here too (univae.prior.fit_prior, FittedPrior, ...)
from univae.cli import CLIError, Parser, report
from univae.density import (  # noqa: F401
    DEFAULT_COMPONENTS,
    DEFAULT_MAX_SENTENCES,
    PRIOR_FILE,
    SAMPLE_SPREAD,
    FittedPrior,
    _one_line,
    fit_gmm,
    fit_prior,
    load_prior,
)
from univae.model import UniVAE
from univae.rundir import ARGS_FILE, read_train_args, split_corpus
from univae.tokenizer import encode_texts

# ----------------------------------------------------------------------------- command


def build_parser():
    p = Parser(
        prog="python -m univae.prior",
        description="Fit a Gaussian mixture to a checkpoint's posterior "
        "codes on the train split of its corpus and write CHECKPOINT/prior.safetensors (see univae/prior.py).",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a univae checkpoint written by train.py")
    p.add_argument("--components", type=int, default=DEFAULT_COMPONENTS, metavar="K")
    p.add_argument(
        "--max-sentences",
        type=int,
        default=DEFAULT_MAX_SENTENCES,
        metavar="N",
        help="fit on a seeded random subset of at most N training sentences",
    )
    p.add_argument("--samples", type=int, default=1, metavar="S", help="posterior samples per sentence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    return p


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        if args.components < 1 or args.samples < 1 or args.max_sentences < 1 or args.batch_size < 1:
            raise ValueError("--components, --max-sentences, --samples and --batch-size must be at least 1")
        t0 = time.time()

        if not os.path.isdir(args.checkpoint):
            raise ValueError(f"{args.checkpoint}: not a directory")
        train_args = read_train_args(args.checkpoint)
        if not train_args or not train_args.get("corpus"):
            raise ValueError(
                f"{args.checkpoint}: no {ARGS_FILE} naming the training corpus (from Python, "
                "univae.prior.fit_prior(model, ids) fits on any sentences)"
            )
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        model = UniVAE.from_pretrained(args.checkpoint).to(device)
        splits, split_seed = split_corpus(train_args["corpus"], model.config.maxlen, train_args)
        encode = lambda texts: encode_texts(model.tokenizer, texts, model.config.maxlen, warn=False)[0]
        source = f"train split (seed {split_seed}) of {train_args['corpus']}"
        prior = fit_prior(
            model,
            encode(splits["train"]),
            args.components,
            args.max_sentences,
            args.samples,
            args.seed,
            source=source,
            heldout_ids=encode(splits["val"]) if splits["val"] else None,
        )
        path = os.path.join(args.checkpoint, PRIOR_FILE)
        prior.save(path)
    except (CLIError, ValueError, OSError) as e:  # CorpusError and json's errors are ValueErrors
        return report("univae.prior", _one_line(e))
    i = prior.info
    heldout = (
        f", held-out {i['heldout_mean_log_likelihood']:.2f} ({i['heldout_n_sentences']} val sentences)"
        if "heldout_mean_log_likelihood" in i
        else ""
    )
    print(
        f"wrote {path}: {i['n_components']} components fitted to {i['n_codes']} posterior samples of "
        f"{i['n_sentences']} sentences ({source}); mean log-likelihood per code {i['mean_log_likelihood']:.2f}"
        f"{heldout}; {i['n_iter']} EM iterations{'' if i['converged'] else ' (not converged)'}, {time.time() - t0:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
