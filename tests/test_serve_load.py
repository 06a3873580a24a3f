"""The REST load test (benchmarks/serve_load.py) in small, as CI runs it: `mlflow models serve` of a tiny registered
captioner, 2 clients, 40 requests (4 malformed, one of each kind); every answer checked, every malformed request a
400, none failed. And the answer check itself refuses wrong answers."""
import json
import random
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from benchmarks import serve_load


@pytest.fixture(scope="module")
def champion(tmp_path_factory) -> str:
    """A tracking URI whose registry holds `captioner@champion`: the small attention captioner of
    tests/fixtures/legacy (no training here), logged by this code as a model from code, as a search logs its trials."""
    from captioning.core import tracking
    from captioning.serving.mlflow_model import log_captioner

    root = tmp_path_factory.mktemp("serve-load")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(experiment_id=tracking.ensure_experiment("serve-load")):
            info = log_captioner(Path(__file__).resolve().parent / "fixtures" / "legacy" / "bundle")
        version = mlflow.register_model(info.model_uri, "captioner").version
        MlflowClient(uri).set_registered_model_alias("captioner", "champion", version)
    finally:
        mlflow.set_tracking_uri(previous)
    return uri


def test_small_load_test_answers_every_request_right(champion):
    images = serve_load.scene_images(12)
    result = serve_load.load_test("models:/captioner@champion", champion, requests=40, clients=2, images=images,
                                  log=lambda line: None)
    assert result["failed"] == 0, result["failures"]
    assert result["answered"] == result["answers_checked"] == 36
    assert result["refused_400"] == 4 and result["refused_400_by_kind"] == dict.fromkeys(serve_load.MALFORMED, 1)
    assert result["server_alive_at_end"] and not result["server_needed_sigkill"]
    assert result["rss_after_warm_up_mib"] > 50 and result["rss_growth"] < 0.5  # the whole tree (uvicorn included)
    assert 0 < result["latency_s"]["p50"] <= result["latency_s"]["p95"] <= result["latency_s"]["p99"]


def test_the_answer_check_refuses_wrong_answers():
    images = serve_load.scene_images(4)
    good = serve_load.good_request(images, random.Random(0), count=2)
    two = {"predictions": [{"caption": "a red circle"}, {"caption": "a blue square"}]}
    assert serve_load.check(good, 200, two) is None
    assert "expected 2 captions" in serve_load.check(good, 200, {"predictions": two["predictions"][:1]})
    assert "empty or missing" in serve_load.check(good, 200, {"predictions": [{"caption": " "}, {"caption": "a"}]})
    assert "expected a 200" in serve_load.check(good, 400, {"error_code": "INVALID_PARAMETER_VALUE"})
    refusal = {"error_code": "INVALID_PARAMETER_VALUE", "message": "row 0 is not base64 text"}
    for kind in serve_load.MALFORMED:
        bad = serve_load.malformed_request(kind, images, random.Random(0))
        assert serve_load.check(bad, 400, refusal) is None
        assert "expected a 400" in serve_load.check(bad, 200, two)
        assert "expected a 400" in serve_load.check(bad, 500, {"error_code": "INTERNAL_ERROR"})
    assert json.loads(serve_load.malformed_request("empty frame", images, random.Random(0)).body) == {
        "dataframe_split": {"columns": ["image"], "data": []}}
    plan = serve_load.request_plan(40, images)
    assert [r.kind for r in plan if r.kind != "good"] == list(serve_load.MALFORMED)
    assert all(1 <= r.images <= 4 for r in plan if r.kind == "good")
    sixteen = [r for r in serve_load.request_plan(20, [f"i{n}" for n in range(40)], rows=16) if r.kind == "good"]
    assert len(sixteen) == 18 and {r.images for r in sixteen} == {16}
    assert {r.images for r in serve_load.warm_up_plan(images * 8, rows=16) if r.kind == "good"} == {16}
    with pytest.raises(SystemExit) as refused:
        serve_load.main(["--rows", "0"])
    assert refused.value.code == 2
