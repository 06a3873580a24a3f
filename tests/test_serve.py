"""`mlflow models serve --env-manager local` answers a REST request with a caption (offline: no new environment), and
refuses server paths, a beam or a batch over the limits and unreadable rows with a 400 and one line. The served
champion is a transformer decoder (1 block, 2 heads) that re-ranks its beam by consensus, with the index its bundle
carries (tests/test_search.py loads a merge one through pyfunc, tests/test_legacy.py an attention one)."""
import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow

from captioning.decoding.captioner import Captioner
from captioning.serving.infra import free_port
from captioning.serving.mlflow_model import download_bundle
from tuning import search as search_cli

EXPERIMENT = """
config: {encoder: pixels, image_size: 32, feature_grid: 4, vocab_min_count: 1, max_length: 24,
         embedding_size: 32, learning_rate: 0.003, dropout: 0.1, epochs: 2, decoder: transformer,
         transformer_layers: 1, transformer_heads: 2, transformer_ff: 64, rerank_neighbours: 3}
search:
  trials: 1
  samples: 0  # no sample captions logged with each trial (tests/test_search.py checks them)
  space:
    dropout: {low: 0.0, high: 0.3}
"""


def test_rest_serving_of_the_champion(tmp_path, shapes_dir, bomb_png, monkeypatch):
    (tmp_path / "serve.yaml").write_text(EXPERIMENT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The server starts `uvicorn` through the shell, so the environment's bin folder must be on PATH (as it is in an
    # activated virtual environment).
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    monkeypatch.chdir(tmp_path)  # the search's artifacts go beside its database, where the server runs
    assert search_cli.main(["--data", str(shapes_dir), "--experiment", str(tmp_path / "serve.yaml"),
                            "--tracking-uri", uri, "--storage", f"sqlite:///{tmp_path / 'o.db'}"]) == 0
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", "models:/captioner@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        image = shapes_dir / "Images" / "scene_00001.jpg"
        encoded = base64.b64encode(image.read_bytes()).decode()
        deadline = time.time() + 120
        while True:
            try:
                status, answer = _post(port, [encoded], beam_width=1)
                break
            except OSError:  # not listening yet
                assert server.poll() is None, server.stdout.read().decode()
                assert time.time() < deadline, "the model server did not answer within 120 s"
                time.sleep(1)
        assert status == 200, answer
        # The served captions are the champion's bundle's, loaded as a Captioner, on the same image and decoding:
        # greedy, and its beam of 3 re-ranked by consensus with the index its bundle carries.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        saved = Captioner.load(download_bundle("models:/captioner@champion"))
        assert saved.neighbours is not None and saved.config.rerank_neighbours == 3
        greedy, reranked = (saved.caption(str(image), beam_width=width) for width in (1, 3))
        assert len(greedy.split()) >= 2 and len(reranked.split()) >= 2
        assert answer["predictions"] == [{"caption": greedy}]
        status, answer = _post(port, [encoded], beam_width=3)  # re-ranked
        assert status == 200 and answer["predictions"] == [{"caption": reranked}], answer

        # Refusals are a 400 with one line (after MLflow's echo of the request), never a 500 or a traceback. A path
        # gets the same answer whether or not the file exists on the server.
        refusals = {"existing path": _post(port, [str(image)]),
                    "missing path": _post(port, [str(shapes_dir / "Images" / "no_such_scene.jpg")]),
                    "beam": _post(port, [encoded], beam_width=11),
                    "rows": _post(port, [encoded] * 65),
                    "not base64": _post(port, [encoded, "not base64!"]),
                    "bomb": _post(port, [base64.b64encode(bomb_png).decode()])}
        errors = {}
        for name, (status, answer) in refusals.items():
            assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE", (name, status, answer)
            assert "Traceback" not in json.dumps(answer), name
            errors[name] = answer["message"].rsplit("Error: ", 1)[-1]
        assert errors["existing path"] == errors["missing path"] == (
            "row 0 looks like a file path or URL; this server opens none named in a request: send the image's bytes, "
            "base64-encoded")
        assert errors["beam"].startswith("beam_width is 11; give 1 (greedy) to 10")
        assert "holds 65 images and this server takes at most 64" in errors["rows"]
        assert errors["not base64"].startswith("row 1 is not base64 text")
        assert errors["bomb"].startswith("row 0 has more pixels than this server reads")
    finally:
        server.terminate()
        server.wait(20)


def _post(port: int, rows: list[str], **params) -> tuple[int, dict]:
    """POST one request to the model server; (HTTP status, JSON answer), for refusals too."""
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[row] for row in rows]},
                       "params": params}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
