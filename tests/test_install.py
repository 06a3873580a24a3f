"""The installed commands: the console scripts of the editable install `make setup` makes, and a non-editable
install, which has no experiment files and says so in one line."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script, words", [
    ("captioning", ("train", "finetune", "ensemble", "rerank", "evaluate", "caption", "relog")),
    ("captioning-search", ("--experiment", "--engine", "--metric")),
    ("captioning-registry", ("list", "promote", "register", "rollback")),
    ("captioning-report", ("--study", "--runs", "--gallery")),
    ("captioning-infra", ("start", "stop", "status", "env")),
])
def test_each_console_script_runs(script, words):
    done = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(word in done.stdout for word in words), done.stdout


@pytest.mark.parametrize("script, words", [("tuning/registry.py", ("promote", "rollback")),
                                           ("tuning/infra.py", ("start", "env"))])
def test_the_old_script_paths_forward(script, words):
    done = subprocess.run([sys.executable, str(PROJECT / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and all(word in done.stdout for word in words), done.stderr[-2000:]


def test_a_non_editable_install_refuses_without_experiments_in_one_line(tmp_path):
    source, target = tmp_path / "source", tmp_path / "site"  # (a copy: the build writes its build/ folder there)
    source.mkdir()
    shutil.copy(PROJECT / "pyproject.toml", source)
    for name in ("requirements", "captioning", "tuning", "reports", "benchmarks"):
        shutil.copytree(PROJECT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(source)], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    assert (target / "captioning" / "models" / "__init__.py").is_file()
    assert (target / "captioning" / "serving" / "pyfunc_model.py").is_file()
    done = subprocess.run([sys.executable, "-m", "captioning", "train"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin",
                                             "TF_CPP_MIN_LOG_LEVEL": "3", "CAPTIONING_CACHE": str(tmp_path / "c")})
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == ["error: no experiments/ folder: this install does not carry the experiment files; run from a "
                     "clone of the workbench (make setup installs it editable), or give the file with --config / "
                     "--experiment PATH"]
