#!/usr/bin/env bash
# bench/gpu_check.sh OUT_DIR -- the CUDA path on one GPU, from the checkout, in at most 8 minutes:
#
#   1. python -m pytest tests/test_cuda.py   flex vs eager, flex+bf16 and fp16+GradScaler training
#                                            vs fp32, compiled decoding under CUDA graphs, torchrun+nccl
#   2. bench/train_step.py, small and base    ours (flex, sdpa) vs transformers' BertForMaskedLM (sdpa):
#                                            tokens/s and MFU against a bf16 8192^3 matmul in the same run
#   3. bench/decode.py                        cached decoding, eager vs compiled (CUDA graphs), B 1/64/256
#
# Prints one markdown table and writes it to OUT_DIR/summary.md, each part's full log beside it
# (OUT_DIR/<part>.log). Each part has its own timeout; a part that fails or times out is marked so
# in the table and the script goes on. Needs no install step and no network: PYTHONPATH=., and
# nothing that imports snownlp or rapidfuzz (train_step.py falls back to synthetic batches).
# Without a CUDA device it prints one line and exits 0. PYTHON=... picks the interpreter.
set -u
OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device is present (torch.cuda.is_available() is False); nothing to check"
    exit 0
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/parts.tsv"

part() {  # part NAME SECONDS COMMAND...: run it with a timeout, log to OUT/NAME.log, record rc and seconds
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "gpu_check: $name (at most ${limit}s) ..." >&2
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >> "$OUT/parts.tsv"
}

# Budgets sum to 470 s (+ start-up): compiles dominate on a bare machine (no Inductor cache yet).
part tests 160 "$PY" -m pytest -q -p no:cacheprovider --durations=0 -rfE tests/test_cuda.py
part train_small 90 "$PY" bench/train_step.py --device cuda --presets small --attn flex sdpa \
    --batch 128 --batches 2 --reps 3 --matmul 8192
part train_base 120 "$PY" bench/train_step.py --device cuda --presets base --attn flex sdpa \
    --batch 128 --batches 2 --reps 3 --matmul 8192
# --attn sdpa: the cached and compiled paths run sdpa whatever the backend (CachedDecoder); it keeps
# the recompute baseline from compiling flex for every batch shape inside the timed runs
part decode 100 "$PY" bench/decode.py --device cuda --compile --attn sdpa --batch-sizes 1 64 256 \
    --maxlens 32 --reps 3

"$PY" - "$OUT" <<'EOF'
"""One markdown table from the parts' logs: OUT/summary.md (and stdout)."""
import os
import re
import sys

import torch

out = sys.argv[1]
parts = {}
for line in open(os.path.join(out, "parts.tsv")):
    name, rc, seconds, limit = line.rstrip("\n").split("\t")
    parts[name] = (int(rc), int(seconds), int(limit))


def log(name):
    path = os.path.join(out, f"{name}.log")
    return open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""


def status(name):
    rc, seconds, limit = parts[name]
    if rc in (124, 137):
        return f"**failed: timeout** ({limit}s)"
    return "ok" if rc == 0 else f"**failed** (exit {rc})"


def md_rows(text, first_cell):
    """Rows (lists of cells) of the markdown tables in text whose first cell matches first_cell."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(first_cell, cells[0]):
            rows.append(cells)
    return rows


rows = []
# 1. the tests
rc, seconds, _ = parts["tests"]
text = log("tests")
summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|error|skipped).*?) in [\d.]+s", text, re.M)
failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
rows.append(["tests/test_cuda.py", (summary[-1] if summary else "no pytest summary")
             + (": " + ", ".join(f.split("::")[-1] for f in failed) if failed else ""), status("tests"), seconds])
# 2. the training step: the "ours vs transformers" table (first table of each log)
for name in ("train_small", "train_base"):
    rc, seconds, _ = parts[name]
    text = log(name)
    roofline = re.search(r"roofline \([^)]*\): ([\d.]+) TFLOP/s", text)
    data = re.search(r"\d+ (\w+) batches of (\d+)", text)
    got = md_rows(text.split("attention backends")[0], r"(ours|hf):\w+(:\w+)?")
    note = f" ({data.group(1)} batches of {data.group(2)}; bf16 matmul {roofline.group(1)} TFLOP/s)" if roofline and data else ""
    if not got:
        rows.append([f"train step, {name[6:]}", "no result" + note, status(name), seconds])
    for i, cells in enumerate(got):  # contender, ms/step, max/min, tokens/s, speed-up, GFLOP/step, TFLOP/s, MFU
        rows.append([f"train step, {cells[0]}", f"{cells[3]} tokens/s, {cells[1]} ms/step, MFU {cells[7]}, "
                     f"{cells[4]} vs hf" + (note if i == 0 else ""), status(name), seconds if i == 0 else ""])
# 3. decoding
rc, seconds, _ = parts["decode"]
text = log("decode")
got = md_rows(text, r"\d+")  # maxlen, B, cached, recompute, ratio, compiled, compiled/cached, compile s, identical
if not got:
    rows.append(["decode", "no result", status("decode"), seconds])
for i, cells in enumerate(got):
    if len(cells) < 9:
        continue
    rows.append([f"decode, maxlen {cells[0]}, B {cells[1]}",
                 f"eager {cells[2]} sent/s, compiled {cells[5]} sent/s ({cells[6]}), compile {cells[7]}s, "
                 f"identical text: {cells[8]}", status("decode"), seconds if i == 0 else ""])

device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
header = (f"gpu_check on {device}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"{sum(s for _, s, _ in parts.values())}s in all; logs: {out}/<part>.log")
lines = ["| part | result | status | s |", "|---|---|---|---|"] + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
table = header + "\n\n" + "\n".join(lines) + "\n"
open(os.path.join(out, "summary.md"), "w", encoding="utf-8").write(table)
print(table)
EOF
