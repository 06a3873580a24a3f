"""The model registry: one `champion` per registered name, moved only under a lock, by a margin, on fresh scores.

    captioning-registry list                               # versions, aliases, scores, why each moved
    captioning-registry promote 3 --reason "better on the new dev set"
    captioning-registry rollback --reason "version 4 drops articles"
    captioning-registry register outputs/tuned --data ~/flickr8k --label "trial 7 fine-tuned"
    (--name NAME for another registered model, --tracking-uri URI for another store, --storage for the searches'
     PostgreSQL storage, whose lock they take too: default $CAPTIONING_STORAGE)

A search registers its best model (`promote_best`): under the registry lock for that name, the challenger and the
current champion are both scored now, on the same dev split, each decoded as it is served (its own beam width and
re-ranking; both greedy for a greedy metric), with this code; the challenger
takes `champion` only if it beats the champion by `search.promote_margin`, else it gets `challenger`. The test split
is scored for the registered version alone (trials log dev scores only), so nothing is chosen by its test score.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path
from typing import Callable

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from captioning.config import ConfigError
from captioning.core.locks import registry_lock
from captioning.core.names import check_name, quote
from captioning.metrics import metric_names, metric_spec, unavailable

CHAMPION, CHALLENGER = "champion", "challenger"
# Dev BLEU-4's noise: its bootstrap standard deviation over the 1,000 Flickr8k dev images (benchmarks/dev_noise.py:
# 0.0050 for an attention model at 0.096). A challenger within it of the champion does not replace it.
PROMOTE_MARGIN = 0.005
HISTORY = "champion_history"  # a registered model's tag: the versions that took `champion`, oldest first


class RegistryError(RuntimeError):
    """A registry request that cannot be done (an unknown version, nothing to roll back to)."""


# --- By hand: the command line ------------------------------------------------------------------------------------

def main(argv=None) -> int:
    from captioning.core.tracking import quiet_libraries, resolve_tracking_uri
    from captioning.data.dataset import DataError
    from captioning.decoding.bundle import BundleError
    from captioning.features.weights import WeightsError
    from captioning.serving.mlflow_model import ModelNotFound

    args = build_parser().parse_args(argv)
    quiet_libraries()
    resolve_tracking_uri(args.tracking_uri)
    storage = args.storage or os.environ.get("CAPTIONING_STORAGE")
    storage = storage if storage and storage.startswith("postgresql") else None  # (a SQLite study has no lock there)
    try:
        check_name(args.name, "--name", "captioner")
        if args.command == "list":
            rows = list_versions(args.name)
            columns = list(rows[0])  # (list_versions raises when there is none)
            widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
            print("  ".join(c.ljust(widths[c]) for c in columns))
            for row in rows:
                print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))
        elif args.command == "register":
            margin = PROMOTE_MARGIN if args.margin is None else args.margin
            outcome = register(args.model, args.name, Path(args.data), args.label, args.metric, margin,
                               args.experiment, storage)
            test = outcome["test"] or {}
            scores = " ".join(f"{test[f'test_bleu{n}']:.4f}" for n in range(1, 5) if f"test_bleu{n}" in test)
            print(f"registered: {args.name} version {outcome['version'].version} as @{outcome['alias']} "
                  f"({outcome['why']})" + (f"\n  test BLEU-1..4: {scores}" if scores else ""))
        elif args.command == "promote":
            promote(args.name, args.version, args.reason, storage)
            print(f"{args.name} version {args.version} is now @champion")
        else:
            version = rollback(args.name, args.reason, storage)
            print(f"{args.name} version {version} is @champion again")
    except (RegistryError, ConfigError, MlflowException, BundleError, DataError, ModelNotFound, WeightsError) as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="List a registered captioner's versions and move its champion by hand.")
    p.add_argument("--name", default="captioner", help="registered model name (default: captioner)")
    p.add_argument("--tracking-uri", metavar="URI", help="default: $MLFLOW_TRACKING_URI, else ./mlflow.db")
    p.add_argument("--storage", metavar="URL", help="the searches' PostgreSQL storage, whose lock they hold while "
                   "they register (default: $CAPTIONING_STORAGE; none for SQLite)")
    commands = p.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="versions with their aliases, scores and promotion notes")
    up = commands.add_parser("promote", help="give a version the champion alias")
    up.add_argument("version")
    up.add_argument("--reason", required=True, help="why: kept on the version's `promotion` tag")
    add = commands.add_parser("register", help="register a captioner trained outside a search (a bundle or model "
                              "URI) under the champion rule: scored on dev against the champion, then on test")
    add.add_argument("model", metavar="MODEL", help="a captioner bundle directory (e.g. from python -m captioning "
                     "finetune or ensemble) or a models:/ or runs:/ URI")
    add.add_argument("--data", required=True, metavar="PATH", help="the dataset to score it on (dev, then test)")
    add.add_argument("--label", required=True, help="what it is, e.g. 'trial 7 fine-tuned': its run's name")
    add.add_argument("--metric", default="dev_bleu4", help="the champion rule's metric (default: dev_bleu4)")
    add.add_argument("--margin", type=float, default=None, help="how much it must beat the champion by (default: "
                     "search.promote_margin's default)")
    add.add_argument("--experiment", default="registered", help="the MLflow experiment of its run")
    back = commands.add_parser("rollback", help="give the champion alias back to the previous champion")
    back.add_argument("--reason", required=True, help="why: kept on the version's `promotion` tag")
    return p


def register(reference: str, name: str, data: Path, label: str, metric: str, margin: float,
             experiment: str = "registered", storage: str | None = None, log: Callable[[str], None] = print) -> dict:
    """A captioner trained outside a search (a bundle directory or a model URI: a fine-tuning, an ensemble)
    logged as a run of `experiment` and registered under the same rule as a search's best (promote_best)."""
    import tempfile

    from captioning.core.tracking import ROLE, STUDY, ensure_experiment
    from captioning.features.prepare import FeatureCache, load_and_report
    from captioning.serving.load import load_captioner
    from captioning.serving.mlflow_model import log_captioner

    check_metric(metric, "--metric")
    if not margin >= 0:
        raise ConfigError(f"--margin must be a number >= 0 (in the metric's units), got {margin}")
    captioner = load_captioner(reference)  # a BundleError names what is missing
    dataset = load_and_report(Path(data), seed=captioner.config.seed, log=log)
    prepared = FeatureCache(dataset, progress=False)
    for config in captioner.feature_groups:  # before the run is logged: a failure (e.g. no weights) logs nothing
        prepared(config)

    tags = {ROLE: "registered", STUDY: label, "label": label, "source": reference}
    with mlflow.start_run(experiment_id=ensure_experiment(experiment), run_name=label, tags=tags) as run:
        mlflow.log_params(captioner.config.to_dict())
        with tempfile.TemporaryDirectory() as tmp:
            info = log_captioner(captioner.save(Path(tmp) / "captioner"))
        mlflow.set_tags({"state": "complete", "model_uri": info.model_uri})
    try:
        return promote_best(MlflowClient().get_run(run.info.run_id), name, metric, margin, dataset, label, storage,
                            prepare=prepared, log=log, by=f"registered by hand ({label})")
    except BaseException as exc:  # the run stays, marked, so that it is not taken for a registered one
        MlflowClient().set_tag(run.info.run_id, "state", f"not registered: {type(exc).__name__}: {exc}"[:5000])
        raise


def dev_metrics() -> tuple[str, ...]:
    """Every score of the dev split a search or the champion rule can use: with the config's beam width (dev_cider)
    or greedy (dev_greedy_cider)."""
    return tuple(f"dev{kind}_{score}" for kind in ("", "_greedy") for score in metric_names())


def check_metric(metric: str, where: str) -> None:
    """A metric the champion rule and the searches can use: known, and computable on this machine."""
    known = dev_metrics()
    if metric not in known:
        raise ConfigError(f"unknown metric {metric!r} ({where}); choose one of {', '.join(known)}")
    if not metric_spec(metric).higher_is_better:
        raise ConfigError(f"metric {metric!r} is better when lower, but the searches and the champion rule maximise "
                          f"their metric; choose one that is better when higher ({where}), e.g. dev_cider")
    why = unavailable(metric)
    if why is not None:
        raise ConfigError(f"metric {metric!r} cannot be computed here: {why}; choose another ({where}), e.g. "
                          "dev_cider or dev_bleu4")


def list_versions(name: str) -> list[dict]:
    from captioning.core.tracking import redact

    client = MlflowClient()
    versions = client.search_model_versions(f"name = {quote(name)}")
    if not versions:
        raise RegistryError(f"no registered model {name!r} in {redact(mlflow.get_tracking_uri())}; "
                            "register one with: python tuning/search.py")
    aliases = aliases_by_version(client, name)
    rows = []
    for v in sorted(versions, key=lambda v: int(v.version)):
        metric = v.tags.get("metric", "")
        rows.append({"version": v.version, "aliases": ",".join(f"@{a}" for a in aliases.get(str(v.version), [])),
                     "study": v.tags.get("study", ""), "metric": metric, "value": v.tags.get(metric, ""),
                     "test_bleu4": v.tags.get("test_bleu4", ""), "promotion": v.tags.get("promotion", ""),
                     "run": v.run_id[:8]})
    return rows


def promote(name: str, version: str, reason: str, storage: str | None = None,
            log: Callable[[str], None] = print) -> None:
    client = MlflowClient()
    with registry_lock(name, storage, log) as guard:
        try:
            client.get_model_version(name, str(version))
        except MlflowException:
            raise RegistryError(f"{name} has no version {version}; see: captioning-registry list") from None
        _check_held(guard, name)
        _make_champion(client, name, str(version), reason, "by hand")


def rollback(name: str, reason: str, storage: str | None = None, log: Callable[[str], None] = print) -> str:
    """Give `champion` back to the version that held it before the current one; returns that version."""
    client = MlflowClient()
    with registry_lock(name, storage, log) as guard:
        current = champion_info(name)
        history = _history(client, name)
        if current is not None and history and history[-1] == str(current.version):
            history.pop()
        if not history:
            raise RegistryError(f"{name} has no earlier champion to roll back to; promote a version by hand: "
                                "captioning-registry promote VERSION --reason TEXT")
        _check_held(guard, name)
        _make_champion(client, name, history[-1], reason, "rollback", history)
        return history[-1]


# --- The champion rule --------------------------------------------------------------------------------------------

def promote_best(best_run, name: str, metric: str, margin: float, dataset, study: str, storage: str | None = None,
                 *, prepare, log: Callable[[str], None] = print, by: str | None = None, export: bool = True) -> dict:
    """Register the search's best trial and give it `champion` if it beats the champion by `margin` on `metric`,
    both scored now on the same split, each decoded as it is served (both greedy for a dev_greedy_ metric); then
    score the registered version on test.
    `prepare`: config -> the dataset's features (a cache: the challenger, champion and test scores share them).
    `by`: who registers, for the promotion note (default: the search `study`). With `export`, the version registered
    is the trial's captioner logged again with its inference export (mlflow_model.log_with_export), so that it runs
    without TensorFlow. Returns {version, alias, why, test}."""
    from captioning.serving.load import load_captioner
    from captioning.serving.mlflow_model import log_with_export

    client = MlflowClient()
    model_uri, run_id = best_run.data.tags["model_uri"], best_run.info.run_id
    split, _, score_name = metric.partition("_")  # dev_greedy_bleu4: dev, greedy decoding, bleu4
    greedy, score_name = score_name.startswith("greedy_"), score_name.removeprefix("greedy_")
    challenger = load_captioner(model_uri)
    registering = model_uri  # the trial's bundle, or it again with its inference export (before the lock: minutes)
    if export and not client.search_model_versions(f"name = {quote(name)} and run_id = {quote(run_id)}"):
        registering = log_with_export(model_uri, run_id, log)
    width = 1 if greedy else challenger.config.beam_width  # each decoded as it is served (or both greedy)
    decoding = _decoding(challenger.config, width)
    value = score(challenger, split, width, prepare)[score_name]  # (before the lock: it is the same)
    with registry_lock(name, storage, log) as guard:
        current = champion_info(name)
        registered = client.search_model_versions(f"name = {quote(name)} and run_id = {quote(run_id)}")
        aliases = aliases_by_version(client, name)
        if registered and str(registered[0].version) in aliases:
            version = registered[0]
            return {"version": version, "alias": aliases[str(version.version)][0], "test": None,
                    "why": f"this run is already registered as version {version.version}"}
        old, why, against = None, "first registered model", decoding
        if current is not None:
            try:
                champion = load_captioner(f"models:/{name}/{current.version}")
                own = 1 if greedy else champion.config.beam_width
                against = _decoding(champion.config, own)
                old = score(champion, split, own, prepare)[score_name]
            except Exception as exc:  # an old or damaged version: it cannot be compared, so nothing moves
                why = (f"the champion (version {current.version}) cannot be scored here ({type(exc).__name__}: "
                       f"{exc}); promote by hand if you trust it: captioning-registry promote VERSION")
        tags = {"metric": metric, metric: f"{value:.6f}", "decoding": decoding, "split": split, "study": study,
                "data_fingerprint": dataset.fingerprint(), "beam_width": str(challenger.config.beam_width),
                "rerank_neighbours": str(challenger.config.rerank_neighbours),
                "rerank_weight": f"{challenger.config.rerank_weight:g}",
                "inference_export": "openvino" if registering != model_uri else "none"}
        if old is not None:
            tags["champion_" + metric] = f"{old:.6f}"
        _check_held(guard, name)
        if registered:  # registered by a run that stopped before moving an alias: compared now, not again
            version = registered[0]
            for key, text in tags.items():
                client.set_model_version_tag(name, str(version.version), key, text)
        else:
            version = mlflow.register_model(registering, name, tags=tags)
        beats = current is None or (old is not None and value > old + margin)  # an unscorable champion stays
        alias = CHAMPION if beats else CHALLENGER
        if old is not None:
            why = (f"{metric} {value:.4f} {'beats' if beats else 'does not beat'} the champion's {old:.4f} (version "
                   f"{current.version}) by {'more than ' if beats else ''}the margin {margin:g} ("
                   + (f"{decoding}, both" if against == decoding else f"{decoding} against its {against}, each")
                   + " scored now)")
        _check_held(guard, name)
        now = champion_info(name)  # a move made without the lock (by hand in the UI) is not overwritten
        if (now and now.version) != (current and current.version):
            raise RegistryError(f"{name}'s champion moved to version {now and now.version} while version "
                                f"{version.version} was being compared; run the search again to compare anew")
        if alias == CHAMPION:
            _make_champion(client, name, str(version.version), why, by or f"search {study}")
        else:
            client.set_registered_model_alias(name, CHALLENGER, str(version.version))
    test = score_registered(name, str(version.version), dataset, prepare)
    return {"version": version, "alias": alias, "why": why, "test": test}


def _decoding(config, width: int) -> str:
    """How a captioner decodes with `width` (1: greedy), as a version's `decoding` tag says it."""
    if width <= 1:
        return "greedy"
    if config.rerank_neighbours:
        return f"beam-{width} re-ranked ({config.rerank_neighbours} neighbours, weight {config.rerank_weight:g})"
    return f"beam-{width}"


def score_registered(name: str, version: str, dataset, prepare) -> dict[str, float] | None:
    """The test split's scores of a registered version, greedy and with its beam width: logged to its run (the only
    trial runs with test scores) and kept as the version's tags."""
    from captioning.serving.load import load_captioner

    if not dataset.splits.get("test"):
        return None
    client = MlflowClient()
    captioner = load_captioner(f"models:/{name}/{version}")
    width = captioner.config.beam_width
    beam = score(captioner, "test", width, prepare)
    greedy = beam if width == 1 else score(captioner, "test", 1, prepare)
    metrics = {f"test_{k}": v for k, v in beam.items()} | {f"test_greedy_{k}": v for k, v in greedy.items()}
    run_id = client.get_model_version(name, version).run_id
    client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, v, int(time.time() * 1000), 0)
                                      for k, v in metrics.items()])
    for key in ("test_bleu1", "test_bleu4", "test_cider"):
        if key in metrics:
            client.set_model_version_tag(name, version, key, f"{metrics[key]:.6f}")
    return metrics


def score(captioner, split: str, beam_width: int, prepare) -> dict[str, float]:
    """A captioner's scores on one split, decoded with `beam_width` (1: greedy); `prepare`: config -> features."""
    from captioning.evaluation.evaluate import evaluate

    return evaluate(captioner, prepare, split, beam_width).scores


def champion_info(name: str):
    """The version holding `champion`; None if there is none (any other failure, e.g. an unreachable server,
    raises: it must not look like an empty registry)."""
    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def aliases_by_version(client: MlflowClient, name: str) -> dict[str, list[str]]:
    """Version -> its aliases, `champion` first, then by name, for the registered model `name` (empty if it does
    not exist yet). Read from the model, as version searches leave aliases out on some stores."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return {}
    aliases: dict[str, list[str]] = {}
    for alias, version in sorted((model.aliases or {}).items(), key=lambda item: (item[0] != CHAMPION, item[0])):
        aliases.setdefault(str(version), []).append(alias)
    return aliases


def _make_champion(client: MlflowClient, name: str, version: str, reason: str, by: str,
                   history: list[str] | None = None) -> None:
    """Move `champion` to `version` (the lock held), with the reason on the version and the model's history of
    champions (given: a rollback's, ending with `version`; else the current one with `version` added)."""
    if history is None:
        history = _history(client, name)
        current = champion_info(name)
        if not history and current is not None:  # a champion from before the history was kept
            history = [str(current.version)]
        if not history or history[-1] != version:
            history = history + [version]
    client.set_registered_model_alias(name, CHAMPION, version)
    if str(client.get_registered_model(name).aliases.get(CHALLENGER)) == version:  # no longer a challenger
        client.delete_registered_model_alias(name, CHALLENGER)
    client.set_registered_model_tag(name, HISTORY, ",".join(history))
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    client.set_model_version_tag(name, version, "promotion", f"{when} {by}: {reason}")


def _history(client: MlflowClient, name: str) -> list[str]:
    text = client.get_registered_model(name).tags.get(HISTORY, "")
    return [v for v in text.split(",") if v]


def _check_held(guard, name: str) -> None:
    if not guard.still_held():
        raise RegistryError(f"the lock on {name}'s aliases was lost (the study's database restarted); nothing was "
                            "moved: run the search again to register its best")


if __name__ == "__main__":
    sys.exit(main())
