"""A local explorer page for a trained UniVAE: reconstruct, edit, sample, interpolate (and transfer).

    python -m univae.app --checkpoint runs/default/last [--host 127.0.0.1] [--port 7860]

One FastAPI app serves one static page (app_page.html: its script and style inline, nothing fetched
from anywhere else) and the JSON endpoints the page calls, which are thin wrappers of
univae.generate:

    GET  /                 the page
    GET  /api/info         the checkpoint: latent family, latent layers and their dims, caps, transfer or not
    POST /api/reconstruct  {text, beam}                            -> reconstruction, its code per latent layer
    POST /api/edit         {text, layers | dims, n, seed, prior, beam} -> n variants, changed characters marked
    POST /api/sample       {n, prior, seed, beam}                  -> n sentences from the prior
    POST /api/interpolate  {a, b, steps, beam}                     -> steps sentences from a to b, ends included
    POST /api/transfer     {text, from_texts, to_texts, strength}  -> only when the model has .transfer

One model serves every request, behind one lock: a seeded call reseeds torch's global RNG and
generation flips the model's train/eval mode, so two calls at once would see each other's state.
Requests outside the caps below are refused (422) rather than silently clipped; a sentence longer
than the model's maxlen is truncated, as everywhere in univae, and the reply says so (`notice`).
"""

import difflib
import inspect
import sys
import threading
import warnings
from pathlib import Path
from typing import Literal

import torch

try:
    import uvicorn
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse
    from pydantic import BaseModel, Field
except ImportError as e:  # the optional extra is missing: one line, not a traceback
    sys.exit(f'univae.app: error: {e.name} is not installed; the explorer needs the app extra: pip install -e ".[app]"')

from univae import edit_dims, generate
from univae.checkpoint import CheckpointError
from univae.cli import CLIError, Parser, report
from univae.model import load_trained
from univae.tokenizer import detokenize

N_MAX = 20  # edit variants and prior samples per request
STEPS_MAX = 12  # interpolation points, ends included
BEAM_MAX = 8
TEXT_MAX_CHARS = 1000  # far above any maxlen: the model reads maxlen - 2 tokens, the rest is cut with a notice
TRANSFER_EXAMPLES_MAX = 100  # example sentences per side of a transfer
CAPS = dict(n=N_MAX, steps=STEPS_MAX, beam=BEAM_MAX, text_chars=TEXT_MAX_CHARS, transfer_examples=TRANSFER_EXAMPLES_MAX)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PAGE = Path(__file__).with_name("app_page.html")
# FastAPI >= 0.16x ships native OpenTelemetry instrumentation, on by default. With only
# opentelemetry-api installed its providers are no-ops, but an OTel SDK in the same environment (or
# FASTAPI_OTEL_AUTO_CONFIGURE=true) would export spans, so the explorer switches all of it off.
TELEMETRY_OFF = dict(tracing=False, metrics=False, logs=False, operation_spans=False, auto_configure=False)


# ----------------------------------------------------------------------------- requests


class Decode(BaseModel):
    beam: int = Field(1, ge=1, le=BEAM_MAX, description="beam size; 1 = greedy")


class TextIn(Decode):
    text: str = Field(..., max_length=TEXT_MAX_CHARS)


class EditIn(TextIn):
    layers: list[int] | None = Field(None, description="latent layers to redraw, 0 = lowest")
    dims: str | None = Field(None, description="or ranges over the full code, e.g. 0:32 (vq: code positions)")
    n: int = Field(4, ge=1, le=N_MAX)
    seed: int | None = 0
    prior: Literal["auto", "fitted", "uniform"] = "auto"


class SampleIn(Decode):
    n: int = Field(4, ge=1, le=N_MAX)
    seed: int | None = None
    prior: Literal["auto", "fitted", "uniform"] = "auto"


class InterpolateIn(Decode):
    a: str = Field(..., max_length=TEXT_MAX_CHARS)
    b: str = Field(..., max_length=TEXT_MAX_CHARS)
    steps: int = Field(5, ge=2, le=STEPS_MAX)


class TransferIn(BaseModel):
    text: str = Field(..., max_length=TEXT_MAX_CHARS)
    from_texts: list[str] = Field(..., min_length=1, max_length=TRANSFER_EXAMPLES_MAX)
    to_texts: list[str] = Field(..., min_length=1, max_length=TRANSFER_EXAMPLES_MAX)
    strength: float = Field(generate.DEFAULT_STRENGTH, ge=0.0, le=8.0)  # the library's default (bench/transfer.py)


# ----------------------------------------------------------------------------- helpers


def truncation_notice(model, text):
    """None if the model reads all of `text`, else a sentence saying what it reads instead."""
    limit = model.config.maxlen - 2  # [CLS] and [SEP] take two of the maxlen slots
    ids = model.tokenizer.encode(text, add_special_tokens=False).ids
    if len(ids) <= limit:
        return None
    kept = detokenize(model.tokenizer, ids[:limit])
    return (
        f"the input has {len(ids)} tokens, more than the {limit} this model reads (maxlen {model.config.maxlen} "
        f"minus [CLS] and [SEP]): only “{kept}” was used"
    )


def marked(reference, text):
    """`text` as [[chunk, changed], ...] (the chunks join back to text): changed chunks are the
    characters not in a block matching `reference` (difflib on characters). Characters deleted from
    the reference leave no chunk."""
    ops = difflib.SequenceMatcher(None, reference, text, autojunk=False).get_opcodes()
    return [[text[j1:j2], tag != "equal"] for tag, _, _, j1, j2 in ops if j2 > j1]


def layer_codes(model, z):
    """Codes z (N, D) -> per row, one list of floats per latent layer (lowest first), for the page's strips."""
    return [[zl.tolist() for zl in model.split_z(row.float())] for row in z.cpu()]


def _one_list(result):
    """model.transfer's outputs for one input sentence, as a list of str (a str, a list of str, or a
    list with one list per input)."""
    if isinstance(result, str):
        return [result]
    result = list(result)
    if result and isinstance(result[0], (list, tuple)):
        result = list(result[0])
    return [str(s) for s in result]


# ----------------------------------------------------------------------------- the endpoints


class Served:
    """The one model every request uses, behind the one lock every request takes."""

    def __init__(self, model):
        self.model = model
        self.lock = threading.Lock()

    def call(self, fn, *args, **kw):
        """fn under the model lock; the API's own ValueErrors (empty text, bad dims, no fitted prior) -> 400.
        encode_texts's truncation warning is dropped: the reply's notice says it instead."""
        with self.lock, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*longer than maxlen")
            try:
                return fn(*args, **kw)
            except ValueError as e:
                raise HTTPException(400, str(e)) from None

    def prior_used(self, prior):
        return "fitted" if self.call(self.model.uses_fitted_prior, prior) else "uniform"


def info_reply(model, checkpoint):
    c = model.config
    return {
        "checkpoint": checkpoint,
        "latent": c.latent,
        "maxlen": c.maxlen,
        "max_tokens": c.maxlen - 2,
        "z_dim": c.z_dim,
        "code_size": edit_dims.edit_size(model),
        "layers": [
            {"index": j, "transformer_layer": l, "dims": edit_dims.layer_span(model, j)}
            for j, l in enumerate(c.latent_layers)
        ],
        "fitted_prior": model.fitted_prior is not None,
        "transfer": hasattr(model, "transfer"),
        "caps": CAPS,
    }


def reconstruct_reply(served, req):
    model = served.model
    out, z = served.call(generate.reconstruct, model, [req.text], return_z=True, beam_size=req.beam)
    reply = {
        "input": req.text,
        "output": out[0],
        "notice": truncation_notice(model, req.text),
        "code": layer_codes(model, z)[0],
    }
    if model.family.has_codes:
        reply["code_ids"] = model.z_to_codes(z)[0].tolist()
    return reply


def requested_dims(model, req):
    """The dims an edit request redraws: its `dims` if given, else the spans of its latent layers; 400 if neither."""
    if req.dims and req.dims.strip():
        return req.dims.strip()
    if req.layers:
        n_layers = model.config.num_latent_layers
        bad = [j for j in req.layers if not 0 <= j < n_layers]
        if bad:
            raise HTTPException(
                400, f"latent layer {bad[0]} does not exist: this model has latent layers 0..{n_layers - 1}"
            )
        return ",".join(edit_dims.layer_span(model, j) for j in sorted(set(req.layers)))
    raise HTTPException(400, "choose at least one latent layer (or dims) to redraw")


def edit_reply(served, req):
    model, call = served.model, served.call
    dims = requested_dims(model, req)
    layers = call(edit_dims.edited_layers, model, dims)
    used = served.prior_used(req.prior)
    recon = call(generate.reconstruct, model, [req.text], beam_size=req.beam)[0]
    out, z = call(
        generate.edit,
        model,
        req.text,
        dims,
        req.n,
        return_z=True,
        prior=req.prior,
        seed=req.seed,
        beam_size=req.beam,
    )
    codes = layer_codes(model, z)
    return {
        "input": req.text,
        "reconstruction": recon,
        "notice": truncation_notice(model, req.text),
        "dims": dims,
        "layers": layers,
        "prior": used,
        "seed": req.seed,
        "variants": [{"text": s, "marks": marked(recon, s), "code": codes[i]} for i, s in enumerate(out)],
    }


def sample_reply(served, req):
    used = served.prior_used(req.prior)
    out = served.call(generate.sample, served.model, req.n, prior=req.prior, seed=req.seed, beam_size=req.beam)
    return {"prior": used, "seed": req.seed, "samples": out}


def interpolate_reply(served, req):
    model = served.model
    out = served.call(generate.interpolate, model, req.a, req.b, req.steps, beam_size=req.beam)
    notices = [n for n in (truncation_notice(model, req.a), truncation_notice(model, req.b)) if n]
    return {
        "a": req.a,
        "b": req.b,
        "notice": "; ".join(notices) or None,
        "path": [{"alpha": i / (req.steps - 1), "text": s} for i, s in enumerate(out)],
    }


def transfer_reply(served, req):
    model = served.model
    out = served.call(model.transfer, [req.text], req.from_texts, req.to_texts, strength=req.strength)
    return {
        "input": req.text,
        "strength": req.strength,
        "notice": truncation_notice(model, req.text),
        "outputs": _one_list(out),
    }


# ----------------------------------------------------------------------------- the app


def create_app(model, checkpoint=""):
    """The page and the JSON endpoints over `model`; each route hands its request to a *_reply function above."""
    model.eval()
    served = Served(model)
    page = PAGE.read_text(encoding="utf-8")
    kwargs = {"telemetry": TELEMETRY_OFF} if "telemetry" in inspect.signature(FastAPI).parameters else {}
    app = FastAPI(title="univae explorer", docs_url=None, redoc_url=None, openapi_url=None, **kwargs)

    # FastAPI reads each route's request model from its signature, hence one small typed def per route
    @app.get("/", response_class=HTMLResponse)
    def index():
        return page

    @app.get("/api/info")
    def info():
        return info_reply(model, checkpoint)

    @app.post("/api/reconstruct")
    def reconstruct(req: TextIn):
        return reconstruct_reply(served, req)

    @app.post("/api/edit")
    def edit(req: EditIn):
        return edit_reply(served, req)

    @app.post("/api/sample")
    def sample(req: SampleIn):
        return sample_reply(served, req)

    @app.post("/api/interpolate")
    def interpolate(req: InterpolateIn):
        return interpolate_reply(served, req)

    @app.post("/api/transfer")
    def transfer(req: TransferIn):
        return transfer_reply(served, req)

    return app


# ----------------------------------------------------------------------------- command line


def load_model(path, device="cpu"):
    """A univae checkpoint directory -> the model in eval mode on `device`; CLIError names what is wrong."""
    try:
        return load_trained(path, device)
    except CheckpointError as e:
        raise CLIError(str(e)) from None


def build_parser():
    p = Parser(
        prog="python -m univae.app",
        description="A local page to reconstruct, edit, sample and interpolate sentences with a univae checkpoint.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="a univae checkpoint directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        model = load_model(args.checkpoint, args.device)
    except CLIError as e:
        return report("univae.app", e)
    if args.host not in LOCAL_HOSTS:
        print(
            f"univae.app: warning: listening on {args.host}, not 127.0.0.1: anyone who can reach this machine "
            "on that address can use the model (there is no authentication)",
            file=sys.stderr,
        )
    c = model.config
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"univae explorer: http://{host}:{args.port}/  ({args.checkpoint}: {c.latent}, "
        f"{c.num_latent_layers} latent layers x {c.z_dim} dims, maxlen {c.maxlen}; Ctrl-C stops)",
        flush=True,
    )
    uvicorn.run(create_app(model, args.checkpoint), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
