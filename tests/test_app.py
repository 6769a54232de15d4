"""univae.app, the explorer page: its JSON API against the model's own API (FastAPI TestClient, on
the debug checkpoint that test_sample.py overfits), its caps and errors, the command line, and the
page itself driven in a real headless Chromium (Debian's /usr/bin/chromium through playwright; no
browser download). The browser tests skip without chromium unless UNIVAE_REQUIRE_BROWSER=1 (CI sets
it). UNIVAE_SCREENSHOT=PATH also writes a screenshot of the page there, from the checkpoint in
UNIVAE_SCREENSHOT_CHECKPOINT (default: the debug one)."""

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")  # TestClient
from fastapi.testclient import TestClient  # noqa: E402
from test_sample import SENTENCES, ckpt, corpus_ckpt  # noqa: E402, F401 (fixtures)

import univae  # noqa: E402
from univae import app as explorer  # noqa: E402
from univae.tokenizer import build_tokenizer, char_vocab  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def model(ckpt):  # noqa: F811
    return univae.UniVAE.from_pretrained(ckpt).eval()


@pytest.fixture(scope="module")
def client(model, ckpt):  # noqa: F811
    return TestClient(explorer.create_app(model, ckpt))


def post(client, path, **body):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


# ----------------------------------------------------------------------------- the API against the model's


def test_info_describes_the_checkpoint(client):
    info = client.get("/api/info").json()
    assert info["latent"] == "vmf" and info["maxlen"] == 16 and info["max_tokens"] == 14
    assert [L["dims"] for L in info["layers"]] == ["0:8", "8:16"]  # debug: 2 latent layers x 8 dims
    assert [L["transformer_layer"] for L in info["layers"]] == [2, 3]
    assert info["fitted_prior"] is False and info["transfer"] is True
    assert info["caps"] == {"n": 20, "steps": 12, "beam": 8, "text_chars": 1000, "transfer_examples": 100}


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for element in ("text", "reconstruct", "output", "edit", "layers", "n", "variants", "sample", "samples"):
        assert f'id="{element}"' in page.text
    for ref in ("src=", "href=", "@import", "url("):  # nothing loaded from elsewhere (the browser test checks requests)
        assert ref not in page.text
    assert client.get("/docs").status_code == 404  # no Swagger UI, whose assets come from a CDN


def test_reconstruct_is_model_reconstruct(client, model):
    for text in SENTENCES:
        r = post(client, "/api/reconstruct", text=text)
        assert r["output"] == model.reconstruct([text])[0] == text  # the fixture reconstructs every one exactly
        assert r["notice"] is None
        z = model.encode([text])[0]
        assert torch.allclose(torch.tensor(sum(r["code"], [])), z, atol=1e-6)
        assert [len(layer) for layer in r["code"]] == [8, 8]
    r = post(client, "/api/reconstruct", text=SENTENCES[2], beam=4)
    assert r["output"] == model.reconstruct([SENTENCES[2]], beam_size=4)[0]


def test_edit_is_model_edit(client, model):
    text = SENTENCES[0]
    r = post(client, "/api/edit", text=text, layers=[1], n=3, seed=7)
    assert [v["text"] for v in r["variants"]] == model.edit(text, "8:16", 3, seed=7)
    assert r["dims"] == "8:16" and r["layers"] == [1] and r["prior"] == "uniform" and r["reconstruction"] == text
    z = model.encode([text])[0]
    for v in r["variants"]:
        assert "".join(chunk for chunk, _ in v["marks"]) == v["text"]
        assert torch.equal(torch.tensor(v["code"][0]), z[:8])  # the kept layer is kept exactly
        assert not torch.allclose(torch.tensor(v["code"][1]), z[8:], atol=1e-3)  # the other one redrawn
    same = post(client, "/api/edit", text=text, dims="8:16", n=3, seed=7)  # dims instead of layers: the same call
    assert [v["text"] for v in same["variants"]] == [v["text"] for v in r["variants"]]
    both = post(client, "/api/edit", text=text, layers=[1, 0, 1], n=2, seed=1)
    assert both["dims"] == "0:8,8:16" and both["layers"] == [0, 1]
    assert [v["text"] for v in both["variants"]] == model.edit(text, "0:8,8:16", 2, seed=1)


def test_marked_marks_changed_characters():
    assert explorer.marked("今天天气很好", "今天天气不好") == [["今天天气", False], ["不", True], ["好", False]]
    assert explorer.marked("今天天气很好", "今天天气很好") == [["今天天气很好", False]]
    assert explorer.marked("今天天气很好", "今天好") == [["今天", False], ["好", False]]  # deletions leave no chunk
    assert explorer.marked("", "他在家") == [["他在家", True]]


def test_sample_and_interpolate_are_the_models(client, model):
    r = post(client, "/api/sample", n=4, seed=3)
    assert r["samples"] == model.sample(4, seed=3) and r["prior"] == "uniform"
    r = post(client, "/api/interpolate", a=SENTENCES[0], b=SENTENCES[1], steps=4)
    assert [p["text"] for p in r["path"]] == model.interpolate(SENTENCES[0], SENTENCES[1], 4)
    assert [p["alpha"] for p in r["path"]] == [0, 1 / 3, 2 / 3, 1]
    assert r["path"][0]["text"] == SENTENCES[0] and r["path"][-1]["text"] == SENTENCES[1]


def test_fitted_prior_is_used_and_reported(corpus_ckpt):  # noqa: F811
    model = univae.UniVAE.from_pretrained(corpus_ckpt).eval()
    client = TestClient(explorer.create_app(model, corpus_ckpt))
    assert client.get("/api/info").json()["fitted_prior"] is True
    for prior in ("auto", "fitted", "uniform"):
        r = post(client, "/api/sample", n=3, seed=5, prior=prior)
        assert r["samples"] == model.sample(3, seed=5, prior=prior)
        assert r["prior"] == ("uniform" if prior == "uniform" else "fitted")
        r = post(client, "/api/edit", text=SENTENCES[1], layers=[0], n=2, seed=5, prior=prior)
        assert [v["text"] for v in r["variants"]] == model.edit(SENTENCES[1], "0:8", 2, seed=5, prior=prior)


def test_too_long_input_is_truncated_with_a_notice(client, model):
    text = "".join(SENTENCES)  # 44 characters; the debug model reads 14 tokens
    r = post(client, "/api/reconstruct", text=text)
    with pytest.warns(UserWarning, match="truncated"):  # the API warns; the page shows the notice instead
        assert r["output"] == model.reconstruct([text])[0]
    assert "14 this model reads" in r["notice"] and "“牙龈出血要吃什么药？今天天气”" in r["notice"]
    r = post(client, "/api/edit", text=text, layers=[0], n=2)
    assert "14 this model reads" in r["notice"] and len(r["variants"]) == 2
    r = post(client, "/api/interpolate", a=SENTENCES[0], b=text, steps=2)
    assert r["notice"].count("this model reads") == 1


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/api/sample", {"n": 21}, "n"),
        ("/api/sample", {"n": 0}, "n"),
        ("/api/edit", {"text": "他在家", "layers": [0], "n": 21}, "n"),
        ("/api/interpolate", {"a": "他", "b": "家", "steps": 13}, "steps"),
        ("/api/interpolate", {"a": "他", "b": "家", "steps": 1}, "steps"),
        ("/api/reconstruct", {"text": "他", "beam": 9}, "beam"),
        ("/api/reconstruct", {"text": "他" * 1001}, "text"),
        ("/api/reconstruct", {}, "text"),
    ],
)
def test_caps_are_enforced(client, path, body, field):
    r = client.post(path, json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field]


def test_caps_themselves_are_allowed(client):
    assert len(post(client, "/api/sample", n=20, seed=0)["samples"]) == 20
    assert len(post(client, "/api/interpolate", a="他", b="家", steps=12)["path"]) == 12


@pytest.mark.parametrize(
    "path, body, message",
    [
        ("/api/reconstruct", {"text": "  "}, "empty text"),
        ("/api/edit", {"text": "他在家", "n": 2}, "choose at least one latent layer"),
        ("/api/edit", {"text": "他在家", "layers": [2]}, "latent layer 2 does not exist"),
        ("/api/edit", {"text": "他在家", "dims": "10:20"}, "reaches outside the code"),
        ("/api/sample", {"prior": "fitted"}, "no fitted prior"),
    ],
)
def test_bad_requests_say_why(client, path, body, message):
    r = client.post(path, json=body)
    assert r.status_code in (400, 501) and message in r.json()["detail"]


def test_transfer_is_model_transfer(model):
    """The transfer endpoint returns model.transfer's output for the sentence, at the library's default
    strength unless one is given."""
    from univae.generate import DEFAULT_STRENGTH

    client = TestClient(explorer.create_app(model))
    for strength in (None, 0.5):
        body = dict(text="他在家", from_texts=["差", "不好"], to_texts=["好", "很好"])
        r = post(client, "/api/transfer", **body, **({} if strength is None else {"strength": strength}))
        want = model.transfer(["他在家"], ["差", "不好"], ["好", "很好"], strength=strength or DEFAULT_STRENGTH)
        assert r["outputs"] == want and r["strength"] == (strength or DEFAULT_STRENGTH)


@pytest.mark.parametrize("latent", ["vmf", "gaussian", "vq", "gmm"])
def test_every_latent_family(latent):
    vocab = char_vocab(SENTENCES)
    torch.manual_seed(0)
    model = univae.UniVAE(univae.preset("debug", vocab_size=len(vocab), latent=latent), build_tokenizer(vocab)).eval()
    client = TestClient(explorer.create_app(model))
    info = client.get("/api/info").json()
    assert [L["dims"] for L in info["layers"]] == (["0:1", "1:2"] if latent == "vq" else ["0:8", "8:16"])
    text = SENTENCES[3]
    r = post(client, "/api/reconstruct", text=text)
    assert r["output"] == model.reconstruct([text])[0] and [len(layer) for layer in r["code"]] == [8, 8]
    if latent == "vq":
        assert r["code_ids"] == model.encode_codes([text])[0].tolist()
    e = post(client, "/api/edit", text=text, layers=[1], n=3, seed=2)
    assert [v["text"] for v in e["variants"]] == model.edit(text, info["layers"][1]["dims"], 3, seed=2)
    assert all(v["code"][0] == r["code"][0] for v in e["variants"])  # the kept layer's code, exactly
    assert post(client, "/api/sample", n=2, seed=0)["samples"] == model.sample(2, seed=0)
    assert len(post(client, "/api/interpolate", a=SENTENCES[0], b=text, steps=3)["path"]) == 3


# ----------------------------------------------------------------------------- a real server


@contextlib.contextmanager
def serving(app):
    """uvicorn in a thread on a free port of 127.0.0.1 -> the base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_concurrent_requests_get_their_own_answers(model):
    """Seeded edits from 16 threads at once: each gets what the same call gives alone (a seeded call
    reseeds torch's global RNG, so without the lock they would draw from each other's streams)."""
    import json

    text = SENTENCES[4]
    expected = {seed: model.edit(text, "0:8", 3, seed=seed) for seed in range(16)}
    got = {}
    with serving(explorer.create_app(model)) as url:

        def ask(seed):
            body = json.dumps({"text": text, "layers": [0], "n": 3, "seed": seed}).encode()
            req = urllib.request.Request(url + "/api/edit", body, {"Content-Type": "application/json"})
            got[seed] = [v["text"] for v in json.load(urllib.request.urlopen(req, timeout=60))["variants"]]

        threads = [threading.Thread(target=ask, args=(s,)) for s in expected]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert got == expected


# ----------------------------------------------------------------------------- the command line


def _one_line_error(capsys, argv):
    assert explorer.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("univae.app: error: ")
    return err


def test_bad_checkpoint_is_one_line_at_start(ckpt, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setattr(explorer.uvicorn, "run", lambda *a, **k: pytest.fail("served a bad checkpoint"))
    assert "no checkpoint at" in _one_line_error(capsys, ["--checkpoint", str(tmp_path / "missing")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is not a univae checkpoint" in _one_line_error(capsys, ["--checkpoint", str(empty)])
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    assert "not valid JSON" in _one_line_error(capsys, ["--checkpoint", str(broken)])
    shutil.copy(os.path.join(ckpt, "config.json"), broken / "config.json")
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert "truncated or corrupt" in _one_line_error(capsys, ["--checkpoint", str(broken)])
    assert "--checkpoint" in _one_line_error(capsys, [])


def test_listens_on_localhost_unless_told(ckpt, capsys, monkeypatch):  # noqa: F811
    runs = []
    monkeypatch.setattr(explorer.uvicorn, "run", lambda app, **kw: runs.append(kw))
    assert explorer.main(["--checkpoint", ckpt]) == 0
    out, err = capsys.readouterr()
    assert runs[-1] == {"host": "127.0.0.1", "port": 7860, "log_level": "warning"} and err == ""
    assert out.startswith("univae explorer: http://127.0.0.1:7860/")
    assert explorer.main(["--checkpoint", ckpt, "--host", "0.0.0.0", "--port", "8000"]) == 0
    out, err = capsys.readouterr()
    assert runs[-1]["host"] == "0.0.0.0" and runs[-1]["port"] == 8000
    assert err.startswith("univae.app: warning: listening on 0.0.0.0") and "no authentication" in err


def test_python_m_univae_app_exits_2_on_a_missing_checkpoint(tmp_path):
    """The real command (serving itself is tested in-process above and through the browser below)."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(REPO)}
    bad = subprocess.run(
        [sys.executable, "-m", "univae.app", "--checkpoint", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stdout == ""
    assert (
        bad.stderr == f"univae.app: error: no checkpoint at {tmp_path / 'nope'}: train one with `python train.py` "
        "(or pass --checkpoint DIR)\n"
    )


# ----------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    required = os.environ.get("UNIVAE_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("UNIVAE_REQUIRE_BROWSER=1 but the playwright package is not installed (the test extra)")
        pytest.skip("playwright is not installed")
    if not os.path.exists(CHROMIUM):
        if required:
            pytest.fail(f"UNIVAE_REQUIRE_BROWSER=1 but {CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"no {CHROMIUM}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def _open(browser, url, **context):
    page = browser.new_context(**context).new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url + "/")
    page.wait_for_function("document.querySelectorAll('#layers option').length > 0")
    return page, requests


def _click_and_wait(page, button, ready):
    page.click(f"#{button}")
    page.wait_for_function(ready, timeout=60_000)


def test_in_the_browser(browser, model, ckpt):  # noqa: F811
    text = SENTENCES[0]
    with serving(explorer.create_app(model, ckpt)) as url:
        page, requests = _open(browser, url)
        page.fill("#text", text)
        _click_and_wait(page, "reconstruct", "document.querySelector('#output').textContent.length > 0")
        out = page.inner_text("#output")
        assert out == model.reconstruct([text])[0] and any("\u4e00" <= ch <= "\u9fff" for ch in out)
        assert page.locator("#code svg").count() == 2 and page.inner_text("#notice") == ""

        page.select_option("#layers", "1")
        page.fill("#n", "3")
        _click_and_wait(page, "edit", "document.querySelectorAll('#variants li').length === 3")
        variants = page.locator("#variants .variant").all_inner_texts()
        assert variants == model.edit(text, "8:16", 3, seed=0)
        changed = "".join(page.locator("#variants mark").all_inner_texts())
        assert changed == "".join(
            c
            for v in post(TestClient(explorer.create_app(model)), "/api/edit", text=text, layers=[1], n=3, seed=0)[
                "variants"
            ]
            for c, m in v["marks"]
            if m
        )

        page.fill("#seed", "4")
        _click_and_wait(page, "sample", "document.querySelectorAll('#samples li').length === 3")
        assert page.locator("#samples li").all_inner_texts() == model.sample(3, seed=4)

        page.fill("#text", "".join(SENTENCES))
        _click_and_wait(page, "reconstruct", "document.querySelector('#notice').textContent.length > 0")
        assert "only “牙龈出血要吃什么药？今天天气” was used" in page.inner_text("#notice")

        page.fill("#n", "25")  # past the cap: the server says no, the page shows why
        _click_and_wait(page, "sample", "document.querySelector('#error').textContent.length > 0")
        assert "n: Input should be less than or equal to 20" in page.inner_text("#error")

        assert page.is_visible("#transfer") and not page.is_visible("#transfer-unavailable")
        assert requests and all(r.startswith(url + "/") for r in requests), requests  # nothing outside this server
        page.context.close()


def test_screenshot(browser, ckpt):  # noqa: F811
    """UNIVAE_SCREENSHOT=docs/explorer.png UNIVAE_SCREENSHOT_CHECKPOINT=runs/default/last: the README's picture."""
    path = os.environ.get("UNIVAE_SCREENSHOT")
    if not path:
        pytest.skip("set UNIVAE_SCREENSHOT=PATH to take the README's screenshot")
    checkpoint = os.environ.get("UNIVAE_SCREENSHOT_CHECKPOINT", ckpt)
    model = explorer.load_model(checkpoint)
    top = str(model.config.num_latent_layers - 1)
    with serving(explorer.create_app(model, checkpoint)) as url:
        page, _ = _open(browser, url, viewport={"width": 1000, "height": 800})
        page.fill("#text", "这家酒店的服务很好，房间也很干净")
        _click_and_wait(page, "reconstruct", "document.querySelector('#output').textContent.length > 0")
        page.select_option("#layers", top)
        page.fill("#n", "4")
        _click_and_wait(page, "edit", "document.querySelectorAll('#variants li').length === 4")
        page.fill("#seed", "1")
        _click_and_wait(page, "sample", "document.querySelectorAll('#samples li').length === 4")
        page.fill("#steps", "4")
        _click_and_wait(page, "interpolate", "document.querySelectorAll('#path li').length === 4")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        page.screenshot(path=path, full_page=True)
        page.context.close()
    assert os.path.getsize(path) > 0
