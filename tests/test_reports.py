"""A comparison report from real tiny searches (Optuna and Keras Tuner) logged to a temporary MLflow database."""
from html.parser import HTMLParser

import pytest

from reports import compare
from tuning import search as search_cli

TINY = """
config: {encoder: pixels, image_size: 32, feature_grid: 4, vocab_min_count: 1, max_length: 24,
         embedding_size: 32, units: 64, learning_rate: 0.01, dropout: 0.1, epochs: 2, patience: 3,
         decoder: attention, attention_units: 16}
search:
  trials: 2
  samples: 0  # no sample captions logged with each trial (tests/test_search.py checks them)
  pruner_startup_trials: 2
  space:
    units: {choices: [32, 64]}
    dropout: {low: 0.0, high: 0.3}
    learning_rate: {low: 0.005, high: 0.02, log: true}
"""


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.images, self.tables = 0, [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tables += tag == "table"
        self.rows += tag == "tr"
        if tag == "img":
            self.images.append(attrs.get("src", ""))


@pytest.fixture(scope="module")
def searched(tmp_path_factory, shapes_dir):
    tmp = tmp_path_factory.mktemp("reports")
    (tmp / "tiny.yaml").write_text(TINY)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    patch = pytest.MonkeyPatch()
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    patch.chdir(tmp)
    # The Optuna study searches attention decoders (whose best's maps the report shows), Keras Tuner merge ones.
    for engine, study, decoder in (("optuna", "opt", "attention"), ("keras-tuner", "kt", "merge")):
        assert search_cli.main(["--data", str(shapes_dir), "--experiment", str(tmp / "tiny.yaml"), "--tracking-uri",
                                uri, "--storage", f"sqlite:///{tmp / 'optuna.db'}", "--engine", engine,
                                "--study", study, "--set", f"decoder={decoder}"]) == 0
    yield tmp, uri
    patch.undo()


def test_report_of_two_studies_side_by_side(searched, capsys):
    tmp, uri = searched
    out = tmp / "report"
    assert compare.main(["--study", "opt", "--study", "kt", "--tracking-uri", uri, "--out", str(out),
                         "--gallery", "3"]) == 0
    page = _Page()
    page.feed((out / "report.html").read_text())
    figures = [src for src in page.images if src.startswith("data:image/png;base64,")]
    assert len(figures) == len(page.images) and len(figures) >= 5 + 3  # the figures and the gallery thumbnails
    text = (out / "report.html").read_text()
    assert text.count('<tr class="') == 4  # one leaderboard row per trial of both studies
    assert "champion (v1)" in text
    studies = (out / "report.md").read_text().split("## Leaderboard")[0]
    assert "| opt | optuna | tiny |" in studies and "| kt | keras-tuner | tiny |" in studies
    for name in ("bleu_top", "learning_curves", "metric_by_parameter", "history", "importances", "gallery",
                 "attention"):  # (attention: the champion's maps on the first three test images)
        assert (out / f"{name}.png").stat().st_size > 5000, name
        assert f"({name}.png)" in (out / "report.md").read_text()
    board = (out / "report.md").read_text().split("## Leaderboard")[1].split("##")[0]
    assert board.count("| complete |") + board.count("| pruned |") == 4


def test_attention_maps_of_the_champion_and_a_merge_model_refused(searched, shapes_dir, tmp_path, capsys):
    from reports import attention_maps

    _, uri = searched
    out = tmp_path / "maps.png"
    assert attention_maps.main(["--data", str(shapes_dir), "--tracking-uri", uri, "--out", str(out)]) == 0
    assert out.stat().st_size > 5000
    with pytest.raises(SystemExit) as stop:  # version 2: the Keras Tuner study's merge decoder
        attention_maps.main(["--data", str(shapes_dir), "--tracking-uri", uri, "--model", "models:/captioner/2",
                             "--out", str(tmp_path / "none.png")])
    assert stop.value.code == 2 and "merge decoder, which has no attention maps" in capsys.readouterr().err


def test_default_report_is_the_latest_study_of_the_experiment(searched, capsys):
    tmp, uri = searched
    assert compare.main(["--experiment", "tiny", "--tracking-uri", uri, "--out", str(tmp / "latest"),
                         "--gallery", "0"]) == 0
    text = (tmp / "latest" / "report.md").read_text()
    assert "kt" in text.split("## Leaderboard")[0] and "| opt |" not in text  # the Keras Tuner study ran last


def test_missing_input_is_one_clear_message(searched, capsys):
    tmp, uri = searched
    assert compare.main(["--study", "nope", "--tracking-uri", uri, "--out", str(tmp / "x")]) == 2
    err = capsys.readouterr().err
    assert "no study named 'nope'" in err and "kt" in err
    assert compare.main(["--experiment", "absent", "--tracking-uri", uri, "--out", str(tmp / "x")]) == 2
    assert "has no study" in capsys.readouterr().err
    assert compare.main(["--runs", "0123456789abcdef", "--tracking-uri", uri, "--out", str(tmp / "x")]) == 2
    assert "no run" in capsys.readouterr().err
    assert not (tmp / "x").exists()


def test_report_of_two_runs_by_id(searched, capsys):
    tmp, uri = searched
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id],
                              "tags.`captioning.role` = 'trial' and tags.state = 'complete'",
                              order_by=["attributes.start_time ASC"])
    chosen = [runs[0], runs[-1]]  # a trial of each study (Optuna's first, Keras Tuner's last)
    assert {run.data.tags["captioning.study"] for run in chosen} == {"opt", "kt"}
    out = tmp / "by-runs"
    assert compare.main(["--runs", *(run.info.run_id for run in chosen), "--tracking-uri", uri, "--out", str(out),
                         "--gallery", "2"]) == 0
    text = (out / "report.html").read_text()
    assert text.count('<tr class="') == 2  # the two runs, and no other trial of their studies
    board = (out / "report.md").read_text().split("## Leaderboard")[1].split("##")[0]
    rows = [line for line in board.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2
    for run in chosen:  # each run's row: its study, trial number and run id
        assert any(f"| {run.data.tags['captioning.study']} | {run.data.tags['trial']} |" in row
                   and run.info.run_id[:8] in row for row in rows), (run.info.run_id, rows)
    assert (out / "bleu_top.png").stat().st_size > 5000
