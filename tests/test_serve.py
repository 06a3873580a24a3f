"""`mlflow models serve --env-manager local` answers a REST request with a caption (offline: no new environment).
The served champion is an attention decoder (tests/test_search.py loads a merge one through pyfunc)."""
import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tuning.infra import free_port

PROJECT = Path(__file__).resolve().parents[1]
EXPERIMENT = """
config: {encoder: pixels, image_size: 32, feature_grid: 4, vocab_min_count: 1, max_length: 24,
         embedding_size: 32, units: 64, learning_rate: 0.01, dropout: 0.1, epochs: 2, decoder: attention,
         attention_units: 16}
search:
  trials: 1
  samples: 2
  space:
    dropout: {low: 0.0, high: 0.3}
"""


def test_rest_serving_of_the_champion(tmp_path, shapes_dir):
    (tmp_path / "serve.yaml").write_text(EXPERIMENT)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # The server starts `uvicorn` through the shell, so the environment's bin folder must be on PATH (as it is in an
    # activated virtual environment).
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([sys.executable, str(PROJECT / "tuning" / "search.py"), "--data", str(shapes_dir),
                    "--experiment", str(tmp_path / "serve.yaml"), "--storage", f"sqlite:///{tmp_path / 'o.db'}"],
                   env=env, check=True, capture_output=True, cwd=tmp_path, timeout=300)
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", "models:/captioner@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        image = shapes_dir / "Images" / "scene_00001.jpg"
        body = json.dumps({"dataframe_split": {"columns": ["image"],
                                               "data": [[base64.b64encode(image.read_bytes()).decode()]]},
                           "params": {"beam_width": 1}}).encode()
        deadline = time.time() + 120
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.time() < deadline, "the model server did not answer within 120 s"
                time.sleep(1)
        caption = answer["predictions"][0]["caption"]
        assert isinstance(caption, str) and len(caption.split()) >= 2
    finally:
        server.terminate()
        server.wait(20)
