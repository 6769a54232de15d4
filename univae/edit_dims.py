"""--replace-dims specs: which part of a code an edit redraws.

A spec names ranges over the full code ("0:32", "0:16,48:64", "-16:"): dims of z, or for VQ
(family.edits_whole_layers) code positions, one per latent layer, each code replaced whole.
parse_dims reads a spec; edit_size, edit_unit, layer_span and edited_layers relate its ranges to the
latent layers. univae.generate.edit_z redraws what a spec names.
"""

import torch


def parse_dims(spec, size):
    """Ranges over the full code -> (sorted LongTensor of dims, list of (start, stop)).

    spec: "0:32", "0:16,48:64", "-16:", ":8", "5", a slice, an int, or a list of those. Negative
    indices count from the end. Unlike Python slices nothing is clipped: a range that is empty or
    reaches outside [0, size) is an error, as is a step."""
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        if not spec.strip() or any(not p for p in parts):
            raise ValueError(f"malformed dims {spec!r}: expected ranges like 0:32 or 0:16,48:64")
    elif isinstance(spec, (int, slice)):
        parts = [spec]
    else:
        parts = list(spec)
        if not parts:
            raise ValueError("no dims given")
    ranges = []
    for p in parts:
        text = p if isinstance(p, str) else repr(p)
        if isinstance(p, str):
            try:
                bounds = [int(x) if x.strip() else None for x in p.split(":")]
            except ValueError:
                raise ValueError(f"malformed range {p!r}: expected start:stop with integers, e.g. 0:32") from None
            if len(bounds) == 1:
                if bounds[0] is None:
                    raise ValueError(f"malformed range {p!r}")
                bounds = [bounds[0], bounds[0] + 1 if bounds[0] != -1 else None]
            if len(bounds) != 2:
                raise ValueError(f"malformed range {p!r}: expected start:stop (no step), e.g. 0:32")
            start, stop = bounds
        elif isinstance(p, slice):
            if p.step not in (None, 1):
                raise ValueError(f"range {p} has a step; only contiguous ranges are allowed")
            start, stop = p.start, p.stop
        elif isinstance(p, int):
            start, stop = p, (p + 1 if p != -1 else None)
        else:
            raise ValueError(f"cannot read {p!r} as a range of dims")
        start = 0 if start is None else start
        stop = size if stop is None else stop
        for x in (start, stop):
            if not -size <= x <= size:
                raise ValueError(f"range {text} reaches outside the code, which has {size} dims (0..{size - 1})")
        start, stop = start + size if start < 0 else start, stop + size if stop < 0 else stop
        if start >= stop:
            raise ValueError(f"range {text} is empty (the code has {size} dims)")
        ranges.append((start, stop))
    dims = sorted({d for a, b in ranges for d in range(a, b)})
    return torch.tensor(dims, dtype=torch.long), ranges


def _edit_width(model):
    """--replace-dims positions per latent layer: z_dim, or one code position (VQ)."""
    return 1 if model.family.edits_whole_layers else model.config.z_dim


def edit_size(model):
    """What --replace-dims ranges index: the latent_dim dims of z, or for VQ the n_latent code
    positions (one per latent layer; a code is replaced whole)."""
    return model.config.num_latent_layers * _edit_width(model)


def edit_unit(model):
    """What --replace-dims counts, in words: "dims", or "code positions" (VQ)."""
    return "code positions" if model.family.edits_whole_layers else "dims"


def layer_span(model, j):
    """The --replace-dims range that covers latent layer j (0 = lowest)."""
    k = _edit_width(model)
    return f"{j * k}:{(j + 1) * k}"


def edited_layers(model, dims):
    """The latent layers (0 = lowest) that a --replace-dims spec touches."""
    _, ranges = parse_dims(dims, edit_size(model))
    k = _edit_width(model)
    return sorted({d // k for a, b in ranges for d in range(a, b)})
