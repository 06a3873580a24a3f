"""Take the README's screenshot of the app: the registered champion captioning one image, in headless Chromium.

    .venv/bin/python docs/app_screenshot.py                       # the first embedded test scene -> docs/app.png
    .venv/bin/python docs/app_screenshot.py --image photo.jpg --out /tmp/app.png --tracking-uri sqlite:///mlflow.db

Starts `streamlit run app.py` from the project folder on a free loopback port (as the browser test does), uploads
the image, waits until the page shows the champion's caption and, for a model with attention, one spotlight per
word, and saves the page. Needs Debian's chromium and chromium-driver (`.ci/run` installs them) and a registered
`captioner@champion` (`make run`).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
FIRST_TEST_SCENE = "scene_01750.jpg"  # the embedded dataset's first test scene
ANY_BOX = "[data-testid='stAlertContainer']"  # Streamlit's st.error, st.warning and st.info
ERROR_BOXES = ANY_BOX + "[role='alert']"  # st.error and st.warning


class ScreenshotError(RuntimeError):
    """What kept the screenshot from being taken, in one line."""


def _wait(condition, seconds: float, what: str, log: Path):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.3)
    raise ScreenshotError(f"timed out after {seconds:.0f} s waiting for {what}; streamlit's log ends:\n"
                          f"{log.read_text()[-2000:]}")


def take(image: Path, out: Path, tracking_uri: str, width: int = 1200, height: int = 1300) -> str:
    """Save the app's page with `image` captioned to `out`; returns the caption the page shows."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    from captioning.serving.infra import free_port

    browser, driver_path = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (browser and driver_path):
        raise ScreenshotError("no chromium/chromedriver on PATH: apt-get install chromium chromium-driver")
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="app-screenshot-")) / "streamlit.log"  # named in any error
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    with open(log, "w") as sink:
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                   "--server.port", str(port), "--server.fileWatcherType", "none",
                                   "--browser.gatherUsageStats", "false"],
                                  cwd=PROJECT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = None
    try:
        def healthy():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).status == 200
            except OSError:
                if server.poll() is not None:
                    raise ScreenshotError(f"streamlit exited ({server.returncode}); its log:\n{log.read_text()}")
                return False

        _wait(healthy, 120, "streamlit to answer", log)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
        driver.get(f"http://127.0.0.1:{port}")

        def body() -> str:
            return driver.find_element(By.TAG_NAME, "body").text

        def unless_refused(found):
            """found(), unless the page shows an error or warning, or says that no model is registered (an info
            box naming app.SEARCH_COMMAND): then its words, as a ScreenshotError."""
            boxes = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ANY_BOX)]
            errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ERROR_BOXES)]
            said = " ".join(errors + [text for text in boxes if "tuning/search.py" in text])
            if said:
                raise ScreenshotError(f"the page says: {said}")
            return found()

        upload = _wait(lambda: unless_refused(lambda: driver.find_elements(By.CSS_SELECTOR, "input[type='file']")),
                       120, "the upload field", log)[0]
        upload.send_keys(str(image.resolve()))
        _wait(lambda: unless_refused(lambda: "Where the model looked" in body() or "has no attention maps" in body()),
              300, "the caption", log)
        caption = driver.execute_script("return (document.querySelector('h3') || {}).innerText || ''")
        if "Where the model looked" in body():
            painted = "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
            _wait(lambda: driver.execute_script(painted) >= len(caption.split()) + 1, 120, "the spotlights", log)
        time.sleep(1.0)  # the last images' fade-in
        if not driver.save_screenshot(str(out)):
            raise ScreenshotError(f"chromium could not write {out}")
        return caption
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)


def main(argv=None) -> int:
    from captioning.data.synthetic import embedded_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, help=f"the image to caption (default: the embedded dataset's "
                                                   f"{FIRST_TEST_SCENE})")
    parser.add_argument("--out", type=Path, default=PROJECT / "docs" / "app.png")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                        help="the registry holding captioner@champion (default: $MLFLOW_TRACKING_URI, else "
                             "mlflow.db in the current folder)")
    args = parser.parse_args(argv)
    image = args.image or embedded_dataset() / "Images" / FIRST_TEST_SCENE
    if not image.is_file():
        print(f"error: no image {image}", file=sys.stderr)
        return 2
    tracking_uri = args.tracking_uri or f"sqlite:///{Path.cwd() / 'mlflow.db'}"  # (streamlit runs in PROJECT)
    try:
        caption = take(image, args.out, tracking_uri)
    except ScreenshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {image.name} captioned {caption!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
