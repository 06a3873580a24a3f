"""benchmarks/runtime_quality.py: its options are checked in one line, and its summary gives each variant's seed mean
and spread and the difference from TensorFlow's mean."""
import pytest

from benchmarks import runtime_quality


def _row(variant: str, seed: int, dev: float, test: float) -> dict:
    scores = {"bleu4": test, "cider": 2 * test}
    return {"variant": variant, "seed": seed,
            "scores": {"dev_beam3": {"bleu4": dev, "cider": 2 * dev}, "test_beam3": scores}}


def test_the_summary_gives_mean_spread_and_difference_from_tensorflow():
    rows = {"a": _row("tensorflow-f32", 0, 0.20, 0.21), "b": _row("tensorflow-f32", 1, 0.22, 0.19),
            "c": _row("openvino-bf16", 1, 0.23, 0.20), "d": _row("openvino-bf16", 0, 0.21, 0.22)}
    summary = runtime_quality.summarise(rows, beam=3)
    tf, bf16 = summary["tensorflow-f32"], summary["openvino-bf16"]
    assert bf16["seeds"] == [0, 1]
    assert tf["dev_bleu4"]["mean"] == pytest.approx(0.21) and tf["dev_bleu4"]["spread"] == pytest.approx(0.02)
    assert bf16["test_cider"]["mean"] == pytest.approx(0.42) and bf16["test_cider"]["spread"] == pytest.approx(0.04)
    assert bf16["minus_tensorflow"]["dev_bleu4"] == pytest.approx(0.01)
    assert bf16["minus_tensorflow"]["test_bleu4"] == pytest.approx(0.01)
    assert tf["minus_tensorflow"]["test_cider"] == 0
    assert "minus_tensorflow" not in runtime_quality.summarise({"c": rows["c"]}, beam=3)["openvino-bf16"]


@pytest.mark.parametrize("argv, message", [
    (["--variants", "openvino-fp16"], "unknown variant 'openvino-fp16'"),
    (["--variants", ","], "name at least one variant"),
    (["--seeds", "0,one"], "a comma-separated list of integers"),
    (["--seeds", ""], "name at least one seed"),
])
def test_bad_options_are_one_line(argv, message):
    with pytest.raises(SystemExit, match=message):
        runtime_quality.main(["--data", "nowhere", *argv])
