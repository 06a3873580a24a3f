"""Every score is a search metric; one that cannot run here is one clear error before any training."""
import pytest

from captioning import metrics
from captioning.config import ConfigError
from captioning.metrics import coco
from tuning.settings import METRICS, read_settings


@pytest.fixture()
def experiment(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("search:\n  trials: 2\n  space:\n    units: {choices: [8, 16]}\n")
    return path


@pytest.mark.parametrize("metric, watched", [
    ("dev_bleu4", "dev_bleu4"), ("dev_greedy_bleu2", "dev_bleu2"), ("dev_cider", "dev_cider"),
    ("dev_greedy_cider", "dev_cider"), ("dev_coco_bleu4", "dev_bleu4"), ("dev_rouge_l", "dev_cider"),
])
def test_metrics_and_what_the_pruner_watches(experiment, metric, watched):
    assert read_settings(experiment, metric=metric).epoch_metric == watched


def test_every_score_is_a_metric():
    assert {f"dev_{s}" for s in metrics.METRICS} | {f"dev_greedy_{s}" for s in metrics.METRICS} == set(METRICS)


def test_unknown_metric_lists_the_known_ones(experiment):
    with pytest.raises(ConfigError, match="unknown metric 'dev_cidr'.*dev_cider"):
        read_settings(experiment, metric="dev_cidr")


def test_a_java_metric_without_java_is_one_clear_error(experiment, monkeypatch):
    monkeypatch.setattr(coco, "_java_on_path", lambda: False)
    monkeypatch.setenv("CAPTIONING_JAVA_METRICS", "on")
    with pytest.raises(ConfigError, match="'dev_meteor'.*cannot be computed here: METEOR runs on Java and no `java`"):
        read_settings(experiment, metric="dev_meteor")
    with pytest.raises(ConfigError, match="'dev_greedy_spice'.*cannot be computed here: SPICE"):
        read_settings(experiment, metric="dev_greedy_spice")
