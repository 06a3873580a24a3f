"""The decoding a finished study's best model is registered with, chosen on dev: its beam width and consensus
re-ranking (neighbours and weight), as `python -m captioning rerank` chooses them by hand. It runs after the ensemble
is grown (whose length penalty is chosen when it is built) and before the registry's rule (summary.summarize).

A new decoding is logged as a run of its own (role `decoding`, tag `source_run`: the best model's run): its model is
the best one's with the chosen beam width, rerank_neighbours and rerank_weight and, when it re-ranks, the neighbour
index of the train split; its dev scores are those of that decoding; `decoding_choice.md` and `.json` hold the dev
scores of every setting tried. When the model's own decoding scores best on dev, nothing new is logged but those two
tables, on the best model's run (tag `decoding_choice` = `kept`), and that run goes on to the registry."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlflow

from captioning.config import Config
from captioning.core.names import quote
from captioning.core.tracking import ROLE, STUDY
from captioning.evaluation.choices import (
    RERANK_NEIGHBOURS,
    RERANK_WEIGHTS,
    RERANK_WIDTHS,
    build_neighbours,
    choose_rerank,
    rerank_lines,
)
from captioning.evaluation.evaluate import evaluate
from captioning.serving.load import load_captioner
from captioning.serving.mlflow_model import log_captioner
from tuning.coordination import worker_id

# search.decoding_choice -> the beam widths, neighbour counts and weights tried, beside the model's own decoding.
# full: what `captioning rerank` tries (30 settings); small: 2 widths and 2 weights at 10 neighbours (6 settings).
GRIDS = {"full": (RERANK_WIDTHS, RERANK_NEIGHBOURS, RERANK_WEIGHTS), "small": ((3, 5), (10,), (0.25, 0.5))}


def choose_decoding(best, runner):
    """The run of the model to register: `best` (an MLflow run with a `model_uri` tag) with the beam width and
    re-ranking that score best on dev by the search's metric, among runner.settings.decoding_choice's grid (a
    new run), or `best` itself if its own decoding does. A finished study's rerun finds the choice made before."""
    settings, client = runner.settings, mlflow.MlflowClient()
    score = settings.metric.removeprefix("dev_")
    if score.startswith("greedy_"):
        runner.say(f"search: {settings.metric} scores greedy captions, which neither the beam width nor re-ranking "
                   "changes; the best model keeps its decoding")
        return best
    source = best.info.run_id
    done = client.search_runs([runner.experiment_id], f"tags.`{STUDY}` = {quote(runner.study)} and tags.`{ROLE}` = "
                              f"'decoding' and tags.source_run = {quote(source)} and tags.state = 'complete'")
    if done:
        return done[0]
    if best.data.tags.get("decoding_choice") == "kept":
        return best
    captioner = load_captioner(best.data.tags["model_uri"])
    own = _decoding(captioner.config)
    if captioner.neighbours is None:  # (a model that re-ranks already carries the index of its train split)
        captioner.neighbours = build_neighbours(runner.features(captioner.feature_groups[0]))
    start = time.perf_counter()
    tried = choose_rerank(captioner, runner.features, score, *GRIDS[settings.decoding_choice])
    seconds = time.perf_counter() - start
    chosen = _decoding(captioner.config)
    label = best.data.tags.get("label") or f"trial {best.data.tags.get('trial')}"
    who = f"the {label}" if "label" in best.data.tags else label  # the ensemble of trials 0, 3; trial 3
    table = rerank_lines(tried, chosen)
    runner.say(f"search: the decoding of {who}, chosen on dev {score} among {len(tried)} settings "
               f"({seconds:.0f}s):")
    for line in table:
        runner.say(f"  {line}")
    record = [{"beam_width": key[0], "rerank_neighbours": key[1], "rerank_weight": key[2], "chosen": key == chosen,
               **{f"dev_{name}": value for name, value in scores.items()}} for key, scores in tried.items()]
    if chosen == own:
        runner.say(f"search: no other decoding beat {who}'s own ({describe(own)}) on dev {score}; it goes on as it "
                   "is")
        _log_tables(client, source, table, record)
        client.set_tag(source, "decoding_choice", "kept")
        return client.get_run(source)
    if not captioner.config.rerank_neighbours:
        captioner.neighbours = None  # (its own re-ranking lost to its plain beam)
    runner.say(f"search: {who} decodes with {describe(chosen)} (dev {score} "
               f"{tried[chosen][score]:.4f} against {tried[own][score]:.4f} with its own {describe(own)})")
    evaluation = evaluate(captioner, runner.features, "dev", captioner.config.beam_width)
    metrics = {f"dev_{name}": value for name, value in evaluation.scores.items()}
    metrics |= {name: value for name, value in best.data.metrics.items() if name.startswith("dev_greedy_")}
    tags = {ROLE: "decoding", STUDY: runner.study, "engine": runner.engine, "worker": worker_id(),
            "label": f"{label}, {describe(chosen)}", "source_run": source, "chosen_by": f"dev {score}",
            "mlflow.parentRunId": runner.parent_run_id,
            **({"members": best.data.tags["members"]} if "members" in best.data.tags else {})}
    with mlflow.start_run(experiment_id=runner.experiment_id, run_name=f"{runner.study}-decoding", tags=tags) as run:
        try:
            mlflow.log_params(captioner.config.to_dict())
            mlflow.log_metrics({**metrics, "decoding_choice_seconds": seconds})
            _log_tables(client, run.info.run_id, table, record)
            with tempfile.TemporaryDirectory() as tmp:
                info = log_captioner(captioner.save(Path(tmp) / "captioner"))
        except Exception as exc:
            mlflow.set_tags({"state": "failed", "error": f"{type(exc).__name__}: {exc}"[:5000]})
            raise
        mlflow.set_tags({"state": "complete", "model_uri": info.model_uri})
    return client.get_run(run.info.run_id)


def describe(decoding: tuple[int, int, float]) -> str:
    """(beam width, neighbours, weight) in words, as the search's lines and run labels say it."""
    width, k, weight = decoding
    beam = "greedy" if width <= 1 else f"beam-{width}"
    return f"{beam}, re-ranked by its {k} nearest training images with weight {weight:g}" if k else \
        f"{beam}, no re-ranking"


def _decoding(config: Config) -> tuple[int, int, float]:
    """(beam width, neighbours, weight) as choose_rerank keys its table: greedy decoding re-ranks nothing."""
    return config.beam_width, config.rerank_neighbours if config.beam_width > 1 else 0, config.rerank_weight


def _log_tables(client, run_id: str, table: list[str], record: list[dict]) -> None:
    client.log_text(run_id, "\n".join(table) + "\n", "decoding_choice.md")
    client.log_dict(run_id, record, "decoding_choice.json")
