"""Names that reach file paths and MLflow filters (studies, experiments, registered models), filter quoting on a real
MLflow store, and passwords given on a command line."""
from pathlib import Path

import pytest
from mlflow import MlflowClient

from captioning.config import ConfigError
from captioning.core.names import check_name, inside, quote
from captioning.core.tracking import password_warning
from reports import compare
from tuning import search as search_cli

PROJECT = Path(__file__).resolve().parents[1]

BAD = ["../escape", "a/b", "", ".hidden", "-flag", "x" * 101, "it's", "name with space", "tab\t", "new\nline"]


@pytest.mark.parametrize("value", BAD)
def test_a_bad_name_is_refused_naming_the_value_the_rule_and_an_example(value):
    with pytest.raises(ConfigError) as error:
        check_name(value, "--study", "shapes-wider")
    message = str(error.value)
    assert repr(value) in message and "letters, digits, '.', '_' or '-'" in message and "e.g. shapes-wider" in message
    assert "\n" not in message.replace(repr(value), "")


def test_good_names_pass():
    for value in ("captioner", "shapes-optuna-1a2b3c4d", "flickr8k.v2_try", "A" * 100):
        assert check_name(value, "--study", "x") == value


def test_search_refuses_bad_study_experiment_and_model_names_before_anything_runs(tmp_path, capsys):
    storage = ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    assert search_cli.main(["--experiment", "shapes", "--study", "../../etc", *storage]) == 2
    assert "--study '../../etc' is not a valid name" in capsys.readouterr().err
    (tmp_path / "my experiment.yaml").write_text((PROJECT / "experiments" / "shapes.yaml").read_text())
    assert search_cli.main(["--experiment", str(tmp_path / "my experiment.yaml"), *storage]) == 2
    assert "experiment 'my experiment' is not a valid name" in capsys.readouterr().err
    assert search_cli.main(["--experiment", "shapes", "--registered-model", "x' or name != '", *storage]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --registered-model (or search.registered_model) \"x' or name != '\" is not a valid")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "m.db").exists()


def test_the_report_refuses_bad_names_in_one_line(tmp_path, capsys):
    uri = ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}", "--out", str(tmp_path / "out")]
    assert compare.main(["--study", "ok", "--study", "a/../../b", *uri]) == 2
    assert "--study 'a/../../b' is not a valid name" in capsys.readouterr().err
    assert compare.main(["--registered-model", "bad name", *uri]) == 2
    assert "--registered-model 'bad name'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.db").exists()


def test_a_path_built_by_inside_never_leaves_its_parent(tmp_path):
    parent = tmp_path / "checkpoints"
    parent.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (parent / "link").symlink_to(tmp_path / "elsewhere")
    for name in ("..", ".", "", "../elsewhere", "a/b", "/etc", "link"):
        with pytest.raises(ConfigError):
            inside(parent, name)
    assert inside(parent, "s1-0123abcd") == parent / "s1-0123abcd"


def test_quoted_values_find_exactly_their_run_on_a_real_mlflow_store(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("quoting")
    values = ["plain", "it's", 'say "hi"', "back\\slash", "x' or tags.k != '", "O''Brien"]
    runs = {value: client.create_run(experiment, tags={"k": value}).info.run_id for value in values}
    for value in values:
        found = client.search_runs([experiment], f"tags.k = {quote(value)} and attributes.status = 'RUNNING'")
        assert [r.info.run_id for r in found] == [runs[value]], value
    for impossible in ("both ' and \"", "ends in \\"):
        with pytest.raises(ConfigError):
            quote(impossible)


def test_a_password_on_the_command_line_is_warned_about_once_and_not_printed(tmp_path, capsys):
    assert password_warning("--storage", "postgresql://u@db.example/optuna") is None  # .pgpass / $PGPASSWORD
    assert password_warning("--storage", f"sqlite:///{tmp_path}/optuna.db") is None
    assert "$CAPTIONING_STORAGE" in password_warning("--storage", "postgresql://u@h/db?password=s3cret")
    assert "$MLFLOW_TRACKING_PASSWORD" in password_warning("--tracking-uri", "https://u:s3cret@mlflow.example")
    assert search_cli.main(["--experiment", "absent", "--storage", "postgresql://u:s3cret@h/db"]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "warning" in line]
    assert len(lines) == 1 and "--storage" in lines[0] and "process list" in lines[0]
    assert "$CAPTIONING_STORAGE" in lines[0] and "~/.pgpass" in lines[0] and "s3cret" not in err
    assert compare.main(["--study", "bad name", "--tracking-uri", "http://u:s3cret@127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "$MLFLOW_TRACKING_USERNAME" in err and "s3cret" not in err


def test_redact_hides_a_password_in_the_user_part_and_in_the_query():
    from captioning.core.tracking import redact

    assert redact("postgresql://u@db/optuna?password=s3cret") == "postgresql://u@db/optuna?password=***"
    assert redact("postgresql://u:pw@db/x?sslmode=require&password=abc") == \
        "postgresql://u:***@db/x?password=***&sslmode=require"
    assert redact("http://a:b@host:5000") == "http://a:***@host:5000" and redact("sqlite:///x.db") == "sqlite:///x.db"
