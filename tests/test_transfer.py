"""Attribute transfer and augmentation filtering: the direction and the move against hand
computations, strength 0 against the reconstruction, sample.py --transfer's rows and its bad input,
augment's dedupe against a constructed decoder output, the downstream helpers."""

from types import SimpleNamespace

import pytest
import torch
from test_sample import SENTENCES, _trained_checkpoint, ckpt, run, run_json, vq_ckpt  # noqa: F401 (fixtures)

import univae
from univae import downstream as DS
from univae import generate as G


@pytest.fixture(scope="module")
def model(ckpt):  # noqa: F811
    return univae.UniVAE.from_pretrained(ckpt).eval()


def _sphere_stub(z_dim):
    """What transfer_z and attribute_direction read of a model: the code's space and layout."""
    return SimpleNamespace(family=SimpleNamespace(space="sphere"), split_z=lambda z: z.split(z_dim, dim=-1))


def test_mean_direction_and_move_by_hand():
    stub = _sphere_stub(2)
    z_from = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]])
    z_to = torch.tensor([[-1.0, 0.0, 1.0, 0.0], [0.0, -1.0, 1.0, 0.0]])
    d = G.attribute_direction(stub, z_from, z_to, method="mean")
    assert torch.equal(d, torch.tensor([-1.0, -1.0, 1.0, -1.0]))  # (-.5, -.5, 1, 0) - (.5, .5, 0, 1)
    moved = G.transfer_z(stub, torch.tensor([[1.0, 0.0, 0.0, 1.0]]), d, 0.5)
    # (1, 0, 0, 1) + 0.5 d = (0.5, -0.5, 0.5, 0.5): each 2-dim layer renormalised
    r = 2**-0.5
    torch.testing.assert_close(moved, torch.tensor([[r, -r, r, r]]))
    torch.testing.assert_close(torch.stack([x.norm(dim=-1) for x in stub.split_z(moved)]), torch.ones(2, 1))


def test_probe_direction_is_the_scaled_discriminant():
    """Two sets that differ by 1 in dim 0 and by 1 in dim 1, where dim 1 is 10x noisier: Fisher's
    normal leans to dim 0; the direction is that unit normal times the mean gap along it."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 2, generator=g) * torch.tensor([0.1, 1.0])
    z_from, z_to = noise[:2000], noise[2000:] + torch.tensor([1.0, 1.0])
    stub = SimpleNamespace(family=SimpleNamespace(space="euclidean"), split_z=lambda z: [z])
    d = G.attribute_direction(stub, z_from, z_to, method="probe", shrinkage=1e-6).double()
    diff = (z_to.mean(0) - z_from.mean(0)).double()
    c = torch.cat([z_from - z_from.mean(0), z_to - z_to.mean(0)]).double()
    w = torch.linalg.solve(c.T @ c / (len(c) - 2), diff)
    w = w / w.norm()
    torch.testing.assert_close(d, w * (w @ diff), rtol=1e-4, atol=1e-5)
    assert abs(d[0]) > 10 * abs(d[1])  # the noisy dim is nearly ignored; the mean difference weighs both alike


def test_same_sets_give_zero_direction_and_strength_zero_is_identity(model):
    z = model.encode(SENTENCES)
    for method in ("probe", "mean"):
        assert torch.equal(G.attribute_direction(model, z, z, method=method), torch.zeros(z.shape[1]))
    d = G.attribute_direction(model, z[:2], z[2:])
    assert torch.equal(G.transfer_z(model, z, d, 0.0), z)


def test_transfer_strength_zero_reconstructs_and_moved_codes_stay_on_spheres(model):
    texts = SENTENCES[:3]
    assert model.transfer(texts, SENTENCES[3:4], SENTENCES[4:], strength=0) == model.reconstruct(texts) == texts
    out, z = G.transfer(model, texts, SENTENCES[3:4], SENTENCES[4:], strength=2.0, return_z=True)
    assert len(out) == 3
    norms = torch.stack([x.norm(dim=-1) for x in model.split_z(z)])
    torch.testing.assert_close(norms, torch.ones_like(norms))
    zi = model.encode(texts)
    d = G.attribute_direction(model, model.encode(SENTENCES[3:4]), model.encode(SENTENCES[4:]))
    expected = torch.cat([torch.nn.functional.normalize(x, dim=-1) for x in model.split_z(zi + 2.0 * d)], dim=-1)
    torch.testing.assert_close(z, expected)


@pytest.mark.parametrize("latent", ["gaussian", "vq"])
def test_transfer_other_families(tmp_path_factory, latent):
    overrides = {"codebook_size": 16, "vq_dead_steps": 5} if latent == "vq" else {}
    m = univae.UniVAE.from_pretrained(_trained_checkpoint(tmp_path_factory, latent, **overrides)).eval()
    z = m.encode(SENTENCES)
    d = G.attribute_direction(m, z[:2], z[2:])
    moved = G.transfer_z(m, z, d, 1.5)
    if latent == "vq":  # every layer snapped to one of its code vectors
        assert torch.equal(moved, m.codes_to_z(m.z_to_codes(moved)))
    else:
        torch.testing.assert_close(moved, z + 1.5 * d)
    assert len(m.transfer(SENTENCES[:2], SENTENCES[2:3], SENTENCES[3:])) == 2


# ----------------------------------------------------------------------------- sample.py --transfer


def _files(tmp_path, **contents):
    """name=text (str, written as UTF-8, or raw bytes) -> {name: path of tmp_path/name.txt}."""
    paths = {}
    for name, text in contents.items():
        path = tmp_path / f"{name}.txt"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
        paths[name] = str(path)
    return paths


def test_cli_transfer_rows_in_input_order(capsys, ckpt, tmp_path):  # noqa: F811
    f = _files(
        tmp_path,
        src="\n".join(SENTENCES[3:]) + "\n",
        tgt=SENTENCES[0] + "\n" + SENTENCES[1] + "\n",
        inp="\n".join(SENTENCES) + "\n\n",
    )
    rows = run_json(capsys, ckpt, "--transfer", f["src"], f["tgt"], "--input", f["inp"], "--strength", "0")
    assert [r["input"] for r in rows] == SENTENCES and [r["output"] for r in rows] == SENTENCES  # strength 0
    moved = run_json(capsys, ckpt, "--transfer", f["src"], f["tgt"], "--input", f["inp"], "--strength", "3")
    assert [r["input"] for r in moved] == SENTENCES and all(r["strength"] == 3.0 for r in moved)
    m = univae.UniVAE.from_pretrained(ckpt).eval()
    assert [r["output"] for r in moved] == m.transfer(SENTENCES, SENTENCES[3:], SENTENCES[:2], strength=3)
    code, out, err = run(capsys, "--checkpoint", ckpt, "--transfer", f["src"], f["tgt"], "--input", f["inp"])
    assert (
        code == 0
        and f"strength {G.DEFAULT_STRENGTH:g}" in out.splitlines()[0]
        and len(out.splitlines()) == 2 + len(SENTENCES)
    )


@pytest.mark.parametrize(
    "which, content, message",
    [
        ("src", "\n \n", "no sentences"),
        ("src", b"\xff\xfe\x00", "not UTF-8"),
        ("tgt", "我喜欢手机" * 8 + "\n", "every line is longer than maxlen"),
        ("tgt", None, "cannot read"),
    ],
)
def test_cli_transfer_bad_files_name_the_file(capsys, ckpt, tmp_path, which, content, message):  # noqa: F811
    f = _files(tmp_path, src=SENTENCES[0] + "\n", tgt=SENTENCES[1] + "\n", inp=SENTENCES[2] + "\n")
    if content is None:
        f[which] = str(tmp_path / "missing.txt")
    else:
        f.update(_files(tmp_path, **{which: content}))
    code, out, err = run(capsys, "--checkpoint", ckpt, "--transfer", f["src"], f["tgt"], "--input", f["inp"])
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert message in err and f[which] in err, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--transfer", "a.txt", "b.txt"], "--transfer needs --input FILE"),
        (["--transfer", "a.txt", "b.txt", "--augment", "c.txt"], "--transfer does not go with --augment"),
        (["--transfer", "a.txt", "b.txt", "--reconstruct", "今天"], "--transfer does not go with --reconstruct"),
        (["--transfer", "a.txt", "b.txt", "--input", "c.txt", "--replace-dims", "0:4"], "--replace-dims"),
        (["--transfer", "a.txt", "b.txt", "--input", "c.txt", "--n", "3"], "--n does not apply"),
        (["--strength", "2"], "--strength goes with --transfer"),
        (["--candidates", "3"], "--candidates goes with --augment"),
    ],
)
def test_cli_transfer_bad_arguments(capsys, ckpt, argv, message):  # noqa: F811
    code, out, err = run(capsys, "--checkpoint", ckpt, *argv)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err


# ----------------------------------------------------------------------------- augment's filter


def test_augment_drops_copies_of_the_source_and_duplicates(model, monkeypatch):
    """A decoder that returns the source, its duplicate and one variant twice: only the variant is left;
    with candidates the ranking keeps the variant closest to the source by char overlap."""
    src = SENTENCES[1]  # 今天天气很好
    outputs = {
        4: [src, src + " ", "今天很好", "今天很好"],
        8: [src, "今天很好", "明天下雨", "今天天气", "今天天气", src, "x", "y"],
    }
    monkeypatch.setattr(G, "decode_texts", lambda model, z, opts, forced=None: outputs[z.shape[0]])
    assert G.augment(model, [src], 4) == [["今天很好"]]  # " " differs from the source by whitespace alone
    ranked = G.augment(model, [src], 2, candidates=4, rank="overlap")[0]
    assert ranked == ["今天很好", "今天天气"]  # the two with the most characters of the source, in decoding order


# ----------------------------------------------------------------------------- downstream helpers


def test_interval_by_hand():
    m, h = DS.interval([1.0, 2.0, 3.0])
    assert m == 2.0 and abs(h - 4.303 * 1.0 / 3**0.5) < 1e-9
    assert DS.interval([0.5]) == (0.5, None)


def test_labelled_sentences_are_single_pieces_of_one_file():
    from univae import data as D

    labels = D.labelled_sentences("builtin:reviews", 30)
    assert D.labelled_sentences("builtin:news", 30) is None
    assert set(labels.values()) == {"pos", "neg"} and len(labels) > 4000
    assert all(4 <= len(s) <= 30 and D.segment(s, 30) == [s] for s in labels)


def test_kept_starts_by_hand():
    # [CLS] a b c [SEP] [PAD] with ids 2, 7, 8, 9, 3, 0: three tokens before [SEP]
    ids = torch.tensor([[2, 7, 8, 9, 3, 0]])
    torch.manual_seed(0)
    forced = G._kept_starts(ids, 200, 1.0, sep=3, pad=0)
    assert forced.shape == (200, 5)
    k = (forced >= 0).sum(1)
    assert set(k.tolist()) == {1, 2, 3}  # k drawn from 1..round(1.0 x 3)
    for row, n in zip(forced.tolist(), k.tolist()):
        assert row == [7, 8, 9, 3, 0][:n] + [-1] * (5 - n)  # the first k target tokens, then free
    assert set((G._kept_starts(ids, 50, 0.5, sep=3, pad=0) >= 0).sum(1).tolist()) == {1, 2}  # round(1.5) = 2


def test_augment_keeps_the_start(model):
    texts = SENTENCES[:3]
    for variants, s in zip(G.augment(model, texts, 6, seed=0, keep_start=0.8), texts):
        assert all(v.startswith(s[0]) for v in variants)  # at least the first token is the sentence's
    assert G.augment(model, texts, 3, seed=0, beam_size=2)  # beam search: no forced prefix by default
    with pytest.raises(ValueError, match="beam search"):
        G.augment(model, texts, 3, keep_start=0.5, beam_size=2)


def test_downstream_section_is_skipped_without_labels(model, tmp_path):
    from univae.measure import downstream_section

    section = downstream_section(model, {"corpus": str(tmp_path / "corpus.txt")}, 0, 64)
    assert section["transfer"] is None and section["augmentation"] is None and "no labels" in section["note"]
    assert "no labels" in downstream_section(model, None, 0, 64)["note"]
