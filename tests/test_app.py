"""The Streamlit app against a real MLflow registry holding a tiny searched attention model (version 1, @champion)
and a tiny merge model (version 2): driven by Streamlit's AppTest, and once in a real browser (headless Chromium)."""
import io
import sys
from pathlib import Path

import mlflow
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from captioning.decoding.captioner import Captioner
from captioning.serving.mlflow_model import download_bundle
from tuning import search as search_cli

PROJECT = Path(__file__).resolve().parents[1]

APP = str(PROJECT / "app.py")
MODEL_HEADER = "Model @champion (version 1)"
TINY = """
config: {encoder: pixels, image_size: 32, feature_grid: 4, vocab_min_count: 1, max_length: 24, embedding_size: 32,
         units: 64, learning_rate: 0.01, dropout: 0.1, epochs: 3, patience: 3, beam_width: 3, decoder: attention,
         attention_units: 16}
search: {trials: 1, samples: 4, pruner_startup_trials: 1, space: {dropout: {low: 0.0, high: 0.3}}}
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory, shapes_dir) -> str:
    """A tracking URI whose registry holds `captioner` version 1 as @champion (one tiny one-trial search)."""
    root = tmp_path_factory.mktemp("app")
    (root / "tiny.yaml").write_text(TINY)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.chdir(root)  # run state goes where the command runs
        assert search_cli.main(["--data", str(shapes_dir), "--experiment", str(root / "tiny.yaml"),
                                "--tracking-uri", uri, "--storage", f"sqlite:///{root / 'optuna.db'}"]) == 0
        _register_a_merge_model(uri, shapes_dir, root)
    return uri


def _register_a_merge_model(uri: str, shapes_dir: Path, root: Path) -> None:
    """Version 2 of `captioner`: a merge decoder trained for one epoch, without an alias."""
    from captioning.config import Config
    from captioning.features.prepare import load_and_report, prepare
    from captioning.serving.mlflow_model import log_captioner
    from captioning.training.run import train_and_evaluate

    config = Config(encoder="pixels", image_size=32, feature_grid=4, vocab_min_count=1, max_length=24,
                    embedding_size=16, units=32, epochs=1)
    result = train_and_evaluate(config, prepare(config, load_and_report(shapes_dir, log=lambda line: None),
                                                 progress=False), eval_splits=(), verbose=False)
    from captioning.core import tracking

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=tracking.ensure_experiment("merge")):  # artifacts beside the database
        info = log_captioner(result.captioner.save(root / "merge" / "captioner"))
    mlflow.register_model(info.model_uri, "captioner")


def _app(monkeypatch, tracking_uri: str) -> AppTest:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    monkeypatch.setenv("MLFLOW_UI_URL", "http://127.0.0.1:9")  # nothing listens there: no link, no waiting
    app = AppTest.from_file(APP, default_timeout=120)  # the first run imports TensorFlow and loads the model
    app.run()
    assert not app.exception
    return app


def _png(path: Path, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert(mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_uploaded_image_gets_the_champions_caption_with_beam_and_greedy(registry, shapes_dir, monkeypatch):
    app = _app(monkeypatch, registry)
    assert app.selectbox[0].options == ["@champion (version 1)", "version 2", "version 1"]
    bleu, tags = (table.value for table in app.table)
    assert tags.loc["metric", "value"] == "dev_bleu4" and "data_fingerprint" in tags.index
    assert list(bleu.columns) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"] and "test, beam 3" in bleu.index
    assert any("tiny-optuna" in m.value and "mlflow ui" in m.value for m in app.markdown)

    image = shapes_dir / "Images" / "scene_00002.jpg"
    mlflow.set_tracking_uri(registry)
    expected = Captioner.load(download_bundle("models:/captioner@champion")).caption_alternatives([image], 3)[0]
    app.file_uploader[0].upload("scene.png", _png(image, "RGBA"), "image/png").run()  # alpha: another colour mode
    assert not app.exception and not app.error
    assert [s.value for s in app.subheader] == [expected[0][0], MODEL_HEADER]
    beams = app.table[0].value
    assert beams["caption"].tolist() == [caption for caption, _ in expected]
    assert beams["score"].tolist() == pytest.approx([score for _, score in expected], abs=1e-3)
    assert any("Where the model looked" in m.value for m in app.markdown)
    assert not any("no attention maps" in c.value for c in app.caption)

    app.radio[0].set_value("greedy").run()
    greedy = Captioner.load(download_bundle("models:/captioner/1")).caption(image, beam_width=1)
    assert [s.value for s in app.subheader] == [greedy, MODEL_HEADER] and len(app.table) == 2  # no beams


def test_empty_registry_says_how_to_make_a_model(tmp_path, monkeypatch):
    app = _app(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(app.info) == 1 and "python tuning/search.py" in app.info[0].value
    assert "No model named `captioner`" in app.info[0].value
    assert not app.file_uploader and not app.error


def test_unknown_model_name_is_the_same_clear_message(registry, monkeypatch):
    monkeypatch.setenv("CAPTIONER_MODEL_NAME", "nope")
    app = _app(monkeypatch, registry)
    assert "No model named `nope`" in app.info[0].value and not app.file_uploader


def test_a_file_that_is_not_an_image_or_too_large_gets_a_clear_error(registry, monkeypatch):
    app = _app(monkeypatch, registry)
    app.file_uploader[0].upload("notes.jpg", b"shopping list: eggs, milk", "image/jpeg").run()
    assert not app.exception and [s.value for s in app.subheader] == [MODEL_HEADER]
    assert [e.value for e in app.error] == ["notes.jpg is not an image this app can read; upload a JPEG, PNG or "
                                            "WebP photo."]
    app.file_uploader[0].set_value(("huge.png", b"\0" * (21 * 2**20), "image/png")).run()
    assert [e.value for e in app.error] == ["huge.png is 21.0 MB; this app takes images up to 20 MB."]


def test_a_merge_model_says_it_has_no_attention_maps(registry, shapes_dir, monkeypatch):
    app = _app(monkeypatch, registry)
    app.selectbox[0].set_value("version 2").run()
    app.file_uploader[0].upload("scene.jpg", (shapes_dir / "Images" / "scene_00002.jpg").read_bytes(),
                                "image/jpeg").run()
    assert not app.exception and not app.error and len(app.subheader) == 2
    assert any("no attention maps: it is a merge decoder" in c.value for c in app.caption)


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (IPv4 and IPv6), read from /proc/net."""
    import ipaddress

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian 32-bit words
                found.add(str(ipaddress.ip_address(words)))
    return found


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium driven by Selenium, shared by the browser tests (each opens its page anew)."""
    import os
    import shutil

    from selenium import webdriver

    browser, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (browser and driver_path):
        if os.environ.get("CAPTIONING_REQUIRE_BROWSER"):
            pytest.fail("headless Chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium/chromedriver on PATH (CI installs them: .ci/run)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1500"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    yield driver
    driver.quit()


class Served:
    """`streamlit run app.py` on a free port, started in `cwd`, its output in `log`."""

    def __init__(self, cwd: Path, tracking_uri: str, log: Path, script: str = APP):
        import os
        import subprocess

        from captioning.serving.infra import free_port

        self.port, self.log = free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_UI_URL": "http://127.0.0.1:9"}
        with open(log, "w") as out:  # no --server.address: .streamlit/config.toml in `cwd` or beside `script` decides
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true", "--server.port",
                 str(self.port), "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_until_healthy(self, timeout: float = 120) -> None:
        """Until the health endpoint answers; a failure, with the server's output, if it exits or never does."""
        import time
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1)
                return
            except OSError as exc:
                if self.process.poll() is not None:
                    pytest.fail(f"streamlit exited ({self.process.returncode}) before it answered:\n"
                                f"{self.log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"streamlit did not answer {self.url}/_stcore/health within {timeout:.0f} s ({exc}); "
                                f"its log ends:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def served(registry, tmp_path_factory):
    """The app served from the project folder (its .streamlit/config.toml applies) on the test registry."""
    server = Served(PROJECT, registry, tmp_path_factory.mktemp("streamlit") / "streamlit.log")
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.stop()


def _browse(driver, server: Served, shots: Path):
    """Open the app anew; returns wait(condition), which on a timeout fails saying what the page and the server
    showed."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url)
    waiter = WebDriverWait(driver, 180)

    def wait(condition):
        try:
            return waiter.until(condition)
        except TimeoutException:
            driver.save_screenshot(str(shots / "timeout.png"))
            pytest.fail(f"timed out in the browser; the page reads:\n{driver.find_element(By.TAG_NAME, 'body').text}"
                        f"\nthe server's log ends:\n{server.log.read_text()[-3000:]}")
    return wait


def _upload_and_wait_for_the_caption(driver, wait, photo: Path, registry: str) -> str:
    """Upload `photo` through the page's file input; returns the champion's caption of it once the page shows it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    upload = wait(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']")))
    upload.send_keys(str(photo))
    mlflow.set_tracking_uri(registry)
    expected = Captioner.load(download_bundle("models:/captioner@champion")).caption(photo)
    headings = "return Array.from(document.querySelectorAll('h3')).map(h => h.innerText)"  # (one read: no stale node)
    wait(lambda d: expected in d.execute_script(headings))
    return expected


def test_in_a_real_browser_an_uploaded_photo_gets_its_caption_and_attention_maps(chromium, served, registry,
                                                                                  shapes_dir, tmp_path):
    """`streamlit run app.py` from the project folder: it listens on loopback only and gives no warning; upload a
    photo, wait for the caption and one spotlight image per word. The screenshot goes to $CAPTIONING_SCREENSHOT if
    set (the README's figure), else into the test's temporary folder."""
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    assert _listening_addresses(served.port) == {"127.0.0.1"}
    wait = _browse(chromium, served, tmp_path)
    expected = _upload_and_wait_for_the_caption(chromium, wait, shapes_dir / "Images" / "scene_00002.jpg", registry)
    wait(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Where the model looked"))
    painted = "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
    wait(lambda d: d.execute_script(painted) >= len(expected.split()) + 1)  # the photo and a spotlight per word
    assert "listens on every network interface" not in chromium.find_element(By.TAG_NAME, "body").text
    shot = Path(os.environ.get("CAPTIONING_SCREENSHOT") or tmp_path / "app.png")
    assert chromium.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_in_a_real_browser_a_webp_photo_is_accepted_and_captioned(chromium, served, registry, shapes_dir, tmp_path):
    """The page's file input lists WebP among the types it accepts, and a WebP photo uploaded there is captioned."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    photo = tmp_path / "scene.webp"
    Image.open(shapes_dir / "Images" / "scene_00002.jpg").save(photo, "WEBP", lossless=True)
    assert Image.open(photo).format == "WEBP"
    wait = _browse(chromium, served, tmp_path)
    accepts = wait(ec.presence_of_element_located((By.CSS_SELECTOR, "input[type='file']"))).get_attribute("accept")
    assert ".webp" in accepts.split(","), accepts
    _upload_and_wait_for_the_caption(chromium, wait, photo, registry)
    width, height = Image.open(photo).size
    wait(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), f"scene.webp ({width} x {height})"))
    assert "not an image this app can read" not in chromium.find_element(By.TAG_NAME, "body").text


def test_without_its_config_it_listens_everywhere_and_the_page_says_so(chromium, tmp_path):
    """app.py served without the project's .streamlit/config.toml (Streamlit reads it from the folder it runs in and
    from the script's folder, so here a copy of app.py in a folder without one; an empty registry: the page stops
    early) listens on every interface, and the page warns about it."""
    import shutil

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(APP, elsewhere / "app.py")
    server = Served(elsewhere, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "streamlit.log",
                    str(elsewhere / "app.py"))
    try:
        server.wait_until_healthy()
        assert _listening_addresses(server.port) & {"0.0.0.0", "::"}, _listening_addresses(server.port)
        wait = _browse(chromium, server, tmp_path)
        wait(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "No model named captioner"))
        body = chromium.find_element(By.TAG_NAME, "body").text
        # (the page shows the file's name as code, without its backticks)
        assert "This page listens on every network interface: keep the project's .streamlit/config.toml beside " \
               "app.py" in body, body
        assert "--server.address 127.0.0.1" in body
    finally:
        server.stop()


def _screenshot_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("app_screenshot", PROJECT / "docs" / "app_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_screenshot_tool_says_why_it_cannot_take_one(chromium, tmp_path, capsys):
    """docs/app_screenshot.py (the README's figure): a missing image, and a registry without a champion, are one line
    each, not a wait; its success is the README's figure (taken as docs/app.md says)."""
    tool = _screenshot_tool()
    assert tool.main(["--image", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "a.png")]) == 2
    assert capsys.readouterr().err == f"error: no image {tmp_path / 'missing.jpg'}\n"
    image = PROJECT / "tests" / "fixtures" / "legacy" / "images" / "red_circle_blue_square.png"
    assert tool.main(["--image", str(image), "--out", str(tmp_path / "a.png"),
                      "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the page says: No model named captioner is registered in") and err.count("\n") == 1
    assert not (tmp_path / "a.png").exists()
