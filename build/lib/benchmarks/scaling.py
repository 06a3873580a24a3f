"""Search throughput with 1, 2 and 4 workers on one PostgreSQL study and one MLflow tracking server, and what the
database and the server cost per trial compared with one worker on local SQLite files.

Trials are tiny on purpose (raw-pixel features of 32 px generated scenes, a 64-unit decoder, 3 epochs, no pruning),
so that the coordination and logging show rather than training. Every worker is a separate process started the way a
user would start it, so process start-up (importing TensorFlow, loading the dataset) is part of the wall time.

    python benchmarks/scaling.py [--trials 8] [--workers 1 2 4]

Starts its own PostgreSQL cluster and MLflow server on free loopback ports (tuning/infra.py) in a temporary
directory and removes them afterwards. Writes benchmarks/results/scaling.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]

EXPERIMENT = """
config: {encoder: pixels, image_size: 32, feature_grid: 4, vocab_min_count: 1, max_length: 24,
         embedding_size: 32, units: 64, learning_rate: 0.01, dropout: 0.1, epochs: 3, patience: 3}
search:
  trials: %d
  samples: 4
  pruner: none
  space:
    dropout: {low: 0.0, high: 0.3}
"""


def run_workers(count: int, study: str, data: Path, experiment: Path, env: dict, workdir: Path) -> float:
    command = [sys.executable, str(PROJECT / "tuning" / "search.py"), "--data", str(data), "--experiment",
               str(experiment), "--study", study, "--registered-model", "bench"]
    start = time.perf_counter()
    workers = [subprocess.Popen(command, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True) for _ in range(count)]
    for worker in workers:
        out, _ = worker.communicate()
        if worker.returncode != 0:
            raise SystemExit(f"a worker failed:\n{out}")
    return time.perf_counter() - start


def trial_seconds(tracking_uri: str, study: str) -> list[float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("bench")
    runs = client.search_runs([experiment.experiment_id],
                              f"tags.`captioning.study` = '{study}' and tags.`captioning.role` = 'trial'")
    return [r.data.metrics["wall_seconds"] for r in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()

    from captioning.data.synthetic import write_dataset
    from captioning.serving import infra as local_infra

    root = Path(tempfile.mkdtemp(prefix="captioning-scaling-", dir="/tmp"))
    root.chmod(0o755)  # PostgreSQL runs as its own user when this runs as root
    os.environ.setdefault("CAPTIONING_CACHE", str(root / "cache"))
    data = write_dataset(root / "shapes", count=160, seed=1)
    experiment = root / "bench.yaml"
    experiment.write_text(EXPERIMENT % args.trials)
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    results = {"trials": args.trials, "machine": f"{os.cpu_count()} CPU cores", "runs": []}
    infra = None
    try:
        # Warm the feature cache once, so that no configuration pays for extraction.
        local = root / "local"
        local.mkdir()
        sqlite_env = {**base_env, "MLFLOW_TRACKING_URI": f"sqlite:///{local / 'mlflow.db'}",
                      "CAPTIONING_STORAGE": f"sqlite:///{local / 'optuna.db'}"}
        run_workers(1, "warm-up", data, experiment, sqlite_env, local)

        wall = run_workers(1, "sqlite", data, experiment, sqlite_env, local)
        per_trial = trial_seconds(sqlite_env["MLFLOW_TRACKING_URI"], "sqlite")
        results["runs"].append({"storage": "sqlite + local MLflow database", "workers": 1, "wall_seconds": wall,
                                "trials_per_hour": args.trials * 3600 / wall,
                                "mean_trial_seconds": statistics.mean(per_trial)})
        print(f"sqlite, 1 worker: {wall:.1f} s, {args.trials * 3600 / wall:.0f} trials/h, "
              f"{statistics.mean(per_trial):.2f} s per trial", flush=True)

        infra = local_infra.start(root / "infra", local_infra.free_port(), local_infra.free_port())
        server_env = {**base_env, "MLFLOW_TRACKING_URI": infra.tracking_uri, "CAPTIONING_STORAGE": infra.storage}
        for count in args.workers:
            study = f"workers-{count}"
            wall = run_workers(count, study, data, experiment, server_env, root)
            per_trial = trial_seconds(infra.tracking_uri, study)
            assert len(per_trial) == args.trials, per_trial
            results["runs"].append({"storage": "PostgreSQL + MLflow server", "workers": count, "wall_seconds": wall,
                                    "trials_per_hour": args.trials * 3600 / wall,
                                    "mean_trial_seconds": statistics.mean(per_trial)})
            print(f"server, {count} worker(s): {wall:.1f} s, {args.trials * 3600 / wall:.0f} trials/h, "
                  f"{statistics.mean(per_trial):.2f} s per trial", flush=True)
    finally:
        if infra is not None:
            local_infra.stop(infra.root)
        shutil.rmtree(root, ignore_errors=True)

    sqlite, one = results["runs"][0], next(r for r in results["runs"][1:] if r["workers"] == 1)
    results["overhead_seconds_per_trial"] = (one["wall_seconds"] - sqlite["wall_seconds"]) / args.trials
    print(f"server overhead per trial (1 worker, wall): {results['overhead_seconds_per_trial']:+.2f} s; "
          f"inside the trial (MLflow logging): {one['mean_trial_seconds'] - sqlite['mean_trial_seconds']:+.2f} s")
    out = PROJECT / "benchmarks" / "results" / "scaling.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
