"""Record the golden outputs tests/test_golden.py compares against: a 40-step fp32 debug-preset run
(its loss curve and final weights, kept as the tiny checkpoint `tiny/`) and each sample.py mode's
--json lines on that checkpoint.

    python tests/golden/record.py                        # from the repository root; rewrites tests/golden/
    python tests/golden/record.py --modes prior_top_p    # only these modes' lines, on the kept tiny/

Run it only when a change is meant to alter these outputs, and say why in the commit."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from test_train import SENTENCES  # noqa: E402

TRAIN_FLAGS = [
    "--preset",
    "debug",
    "--batch-size",
    "8",
    "--precision",
    "fp32",
    "--max-steps",
    "40",
    "--log-every",
    "1",
    "--eval-every",
    "1000",
    "--eval-sentences",
    "4",
    "--warmup",
    "5",
    "--prior-components",
    "2",
    "--seed",
    "0",
]
# each sample.py mode once, greedy or seeded, on the tiny checkpoint
SAMPLE_MODES = {
    "prior": ["--n", "4", "--seed", "1"],
    "prior_top_p": ["--n", "4", "--seed", "2", "--top-p", "0.9"],
    "reconstruct": ["--reconstruct", "今天天气很好", "酒店的服务很周到", "--with-z"],
    "reconstruct_beam": ["--reconstruct", "房间太小了", "--beam-size", "3"],
    "edit": ["--text", "我喜欢这本书", "--replace-dims", "0:8", "--n", "3", "--seed", "3"],
    "interpolate": ["--interpolate", "今天天气很好", "质量太差了", "--steps", "4"],
    "analogy": ["--analogy", "房间太小了", "尺寸偏小", "价格便宜质量不错", "--n", "2", "--seed", "4"],
    "augment": ["--augment", "{corpus}", "--n", "2", "--seed", "5"],
}


def corpus_file(directory):
    path = os.path.join(directory, "corpus.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(f"{s}{i % 7}" for i, s in enumerate(SENTENCES)) + "\n")
    return path


def train(out, corpus):
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--corpus", corpus, "--out", out, *TRAIN_FLAGS],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["loss"] for line in f if '"split"' not in line]


def sample_outputs(checkpoint, corpus, modes=SAMPLE_MODES):
    outputs = {}
    for mode in modes:
        flags = SAMPLE_MODES[mode]
        flags = [corpus if f == "{corpus}" else f for f in flags]
        res = subprocess.run(
            [sys.executable, os.path.join(ROOT, "sample.py"), "--checkpoint", checkpoint, "--json", *flags],
            check=True,
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        outputs[mode] = [json.loads(line) for line in res.stdout.splitlines()]
    return outputs


def record_all():
    with tempfile.TemporaryDirectory() as tmp:
        corpus = corpus_file(tmp)
        curve = train(os.path.join(tmp, "run"), corpus)
        tiny = os.path.join(HERE, "tiny")
        shutil.rmtree(tiny, ignore_errors=True)
        shutil.copytree(os.path.join(tmp, "run", "last"), tiny, ignore=shutil.ignore_patterns("training_state.pt"))
        return {"loss_curve": curve, "sample": sample_outputs(tiny, corpus)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=SAMPLE_MODES, help="re-record only these sample modes")
    args = parser.parse_args()
    path = os.path.join(HERE, "golden.json")
    if args.modes:
        with open(path, encoding="utf-8") as f:
            golden = json.load(f)
        with tempfile.TemporaryDirectory() as tmp:
            golden["sample"].update(sample_outputs(os.path.join(HERE, "tiny"), corpus_file(tmp), args.modes))
    else:
        golden = record_all()
    with open(path, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
