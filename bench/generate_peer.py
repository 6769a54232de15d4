"""Generation against a peer: UniVAE's cached decoder vs transformers' generate() with its KV cache
on a GPT-2 of the same size, in generated tokens per second.

    python bench/generate_peer.py --dtype bf16 --reps 5          small and base, B 1 16 64, 2 threads, bf16 autocast
    python bench/generate_peer.py --reps 5                       --dtype auto: bf16 only where it is fast
    python bench/generate_peer.py --presets small --batch-sizes 1 16 --reps 1 --dtype fp32    a smoke run
    python bench/generate_peer.py --checkpoint runs/default/last --dtype bf16 --reps 5        a trained UniVAE

Per preset: an untrained UniVAE of that preset over the bundled backbone's vocab (the tokenizer
the default run fine-tunes with), or with --checkpoint a trained one (what a user samples from:
nucleus sampling costs less where the model is sure, see univae.decoding.candidates), and a
randomly initialised transformers.GPT2LMHeadModel with the
same width, depth, heads, FFN size, activation and vocab (its default sdpa attention). Per mode and
batch size B, each side generates B sentences in one batch:

    reconstruct   UniVAE: model.reconstruct of B held-out review sentences (builtin:reviews' test split),
                  greedy; tokenising, encoding the posterior mean and detokenising are all in its time
    prior greedy  UniVAE: model.sample(B), greedy (a prior draw per sentence, decoded, detokenised)
    prior top-p   UniVAE: model.sample(B, top_p=P), nucleus sampling at P (default 0.9)

against GPT-2's generate(use_cache=True) from a one-token prompt ([CLS]'s id), greedy for the first
two modes and do_sample with the same top_p (top_k off, temperature 1) for the third. The GPT-2
side reads no sentence: in the reconstruct rows only UniVAE pays for an encoding.

Equal work: both sides generate exactly maxlen - 1 new tokens per sentence (31 for both presets),
the most UniVAE's decoder produces. An untrained model may say [SEP] early, so each side is kept
from ending: GPT-2 by min_new_tokens (its EOS is [SEP]'s id, whose score is set to -inf until then),
UniVAE by a -1e4 bias on [SEP] in its output layer (the same one-logit ban, at no cost). The
new tokens are still counted, not assumed: an untimed run of each side before timing (also the
warm-up) counts each sentence's tokens up to and including an end token, and tokens/s = those
counts / the median time. The "new tokens" column says what both sides produced per sentence,
or both counts where they differ.

Both run under the same precision: --dtype bf16 (torch.autocast), fp32, or
auto (bf16 only where the CPU or GPU multiplies bf16 in hardware, univae.training.autocast_dtype;
elsewhere oneDNN emulates bf16 and both sides slow down several-fold). The footer says which.
Timing is interleaved (bench/common.py): the median of --reps runs per side, on --threads 2
unless told otherwise (both cores; on a loaded machine two threads wait on each other,
see common.py). Other differences are UniVAE's own: its output layer has BERT's transform (dense,
gelu, LayerNorm) before the tied projection, GPT-2's only a final LayerNorm; UniVAE's cache holds
maxlen + 1 slots from the start and every step attends over all of them (the mask hides the
unfilled ones), GPT-2's grows by one.
Peak RSS is the process's high-water mark so far (resource.getrusage), models of earlier presets
included.
"""

import argparse
import contextlib
import sys

import torch
import transformers
from common import device_arg, interleaved, machine_note, setup, table  # noqa: E402 (sets sys.path)

import univae  # noqa: E402
from univae import data as D  # noqa: E402
from univae.checkpoint import BUNDLED  # noqa: E402
from univae.decoding import Decoding, decode_ids  # noqa: E402
from univae.generate import posterior  # noqa: E402
from univae.tokenizer import CLS, PAD, SEP, load_tokenizer  # noqa: E402
from univae.training import autocast_dtype, peak_rss_mb  # noqa: E402

MODES = ("reconstruct", "prior greedy", "prior top-p")
BUNDLED_VOCAB = BUNDLED["bundled"]


def build_univae(name, tokenizer, **overrides):
    """An untrained UniVAE of preset `name` over `tokenizer`'s vocab, eval mode, kept from ending early."""
    config = univae.preset(name, vocab_size=tokenizer.get_vocab_size(), **overrides)
    torch.manual_seed(0)
    return never_ending(univae.UniVAE(config, tokenizer).eval())


def never_ending(model):
    """model, its [SEP] logit lowered by 1e4 (in place)."""
    tokenizer = model.tokenizer
    with torch.no_grad():  # the counterpart of GPT-2's min_new_tokens: [SEP] never wins
        model.transformer.head.bias[tokenizer.token_to_id(SEP)] = -1e4
    return model


def gpt2_peer(model, new_tokens):
    """A randomly initialised GPT2LMHeadModel of the UniVAE's width, depth, heads, FFN, activation and
    vocab; [CLS]/[SEP]/[PAD]'s ids as its BOS/EOS/pad."""
    c, tok = model.config, model.tokenizer
    config = transformers.GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=max(c.max_position_embeddings, 1 + new_tokens),
        n_embd=c.hidden_size,
        n_layer=c.num_hidden_layers,
        n_head=c.num_attention_heads,
        n_inner=c.intermediate_size,
        activation_function=c.hidden_act,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=c.layer_norm_eps,
        bos_token_id=tok.token_to_id(CLS),
        eos_token_id=tok.token_to_id(SEP),
        pad_token_id=tok.token_to_id(PAD),
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).eval()


def held_out_sentences(n, maxlen):
    """n sentences of builtin:reviews' test split (train.py's split), at most maxlen - 2 characters."""
    sentences, _ = D.load_sentences("builtin:reviews", limit=maxlen - 2)
    test = D.split(sentences)["test"]
    if len(test) < n:
        raise SystemExit(f"builtin:reviews' test split has {len(test)} sentences, fewer than B = {n}")
    return test[:n]


def univae_call(model, mode, B, texts, top_p):
    """The timed UniVAE call: the public API, one batch of B."""
    if mode == "reconstruct":
        return lambda: model.reconstruct(texts[:B], batch_size=B)
    sampling = dict(top_p=top_p) if mode == "prior top-p" else {}
    return lambda: model.sample(B, batch_size=B, prior="uniform", **sampling)


def univae_new_tokens(model, mode, B, texts, top_p):
    """The same decoding as univae_call, untimed, counting each sentence's new tokens ([SEP] included)."""
    opts = Decoding(batch_size=B, top_p=top_p if mode == "prior top-p" else None)
    with torch.no_grad():
        z = posterior(model, texts[:B])[0] if mode == "reconstruct" else model.sample_prior(B, prior="uniform")
        ids = decode_ids(model, z, opts)  # without [SEP]; a sentence shorter than maxlen - 1 ended on one
    return sum(min(len(r) + 1, model.config.maxlen - 1) for r in ids)


def peer_call(peer, mode, B, new_tokens, top_p, device):
    """The timed GPT-2 call: generate() from a one-token prompt, forced to new_tokens tokens."""
    prompt = torch.full((B, 1), peer.config.bos_token_id, dtype=torch.long, device=device)
    sampling = dict(top_p=top_p, top_k=0, temperature=1.0) if mode == "prior top-p" else {}
    return lambda: peer.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=bool(sampling),
        use_cache=True,
        pad_token_id=peer.config.pad_token_id,
        eos_token_id=peer.config.eos_token_id,
        **sampling,
    )


def peer_new_tokens(out, prompt_len, eos):
    """generate()'s output -> the new tokens of all rows, each up to and including its first EOS."""
    new = out[:, prompt_len:]
    ended = new == eos
    first = torch.where(ended.any(1), ended.int().argmax(1) + 1, new.shape[1])
    return int(first.sum())


def measure(model, peer, mode, B, texts, device, dtype, reps, top_p=0.9):
    """One cell: {side: (new tokens, median seconds)} for side in univae, gpt2, same precision for both."""
    new_tokens = model.config.maxlen - 1
    amp = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else contextlib.nullcontext

    def under_amp(fn):
        def run():
            with amp():
                return fn()

        return run

    fns = {
        "univae": under_amp(univae_call(model, mode, B, texts, top_p)),
        "gpt2": under_amp(peer_call(peer, mode, B, new_tokens, top_p, device)),
    }
    torch.manual_seed(0)
    with amp():  # untimed, one run per side: the counts, and the warm-up
        counts = {
            "univae": univae_new_tokens(model, mode, B, texts, top_p),
            "gpt2": peer_new_tokens(fns["gpt2"](), 1, peer.config.eos_token_id),
        }
    t = interleaved(fns, reps, device, warmup=0)
    return {side: (counts[side], t[side]) for side in fns}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["small", "base"])
    p.add_argument("--checkpoint", help="a trained UniVAE instead of the untrained presets")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64], metavar="B")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--reps", type=int, default=3, help="timed runs per side and cell (median)")
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--dtype", choices=["bf16", "fp32", "auto"], default="auto", help="autocast dtype of both sides")
    p.add_argument("--out", help="also write the table and its notes to this file")
    device_arg(p)
    p.set_defaults(threads=2)
    args = p.parse_args()
    device = setup(args)
    dtype = autocast_dtype(args.dtype, device)

    tokenizer = load_tokenizer(BUNDLED_VOCAB)
    texts = None
    rows = []
    for name in [args.checkpoint] if args.checkpoint else args.presets:
        if args.checkpoint:
            model = never_ending(univae.UniVAE.from_pretrained(args.checkpoint).eval()).to(device)
        else:
            model = build_univae(name, tokenizer).to(device)
        peer = gpt2_peer(model, model.config.maxlen - 1).to(device)
        if texts is None and "reconstruct" in args.modes:
            texts = held_out_sentences(max(args.batch_sizes), model.config.maxlen)
        for mode in args.modes:
            for B in args.batch_sizes:
                r = measure(model, peer, mode, B, texts, device, dtype, args.reps, args.top_p)
                (n_u, t_u), (n_g, t_g) = r["univae"], r["gpt2"]
                per_sentence = f"{n_u / B:g}" if n_u == n_g else f"{n_u / B:g} / {n_g / B:g}"
                rows.append(
                    [
                        name,
                        mode,
                        B,
                        per_sentence,
                        f"{n_u / t_u:.0f}",
                        f"{n_g / t_g:.0f}",
                        f"{(n_u / t_u) / (n_g / t_g):.2f}x",
                        f"{peak_rss_mb():.0f}",
                    ]
                )
                print(f"{name} {mode} B {B}: {t_u:.3f} s / {t_g:.3f} s", file=sys.stderr, flush=True)

    headers = ["preset", "mode", "B", "new tokens", "UniVAE tok/s", "GPT2 tok/s", "UniVAE / GPT2", "peak RSS MB"]
    auto = f" (--dtype auto: {'fast' if dtype is not None else 'no fast'} bf16 here)" if args.dtype == "auto" else ""
    notes = [
        f"precision: {'bf16 autocast' if dtype is not None else 'fp32'} on both sides{auto}; "
        f"top-p {args.top_p}; median of {args.reps} run(s); new tokens per sentence, the same for both sides; "
        f"transformers {transformers.__version__}, GPT-2 attention {peer.config._attn_implementation}",
        machine_note(device),
    ]
    text = "\n".join([table(headers, rows), "", *notes])
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
