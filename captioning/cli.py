"""The command line, `captioning` or `python -m captioning COMMAND`: train, finetune (self-critical stage of a trained
captioner), ensemble, rerank (consensus re-ranking chosen on dev), evaluate, caption, export (for inference without
TensorFlow) and relog (a pickled MLflow version registered again as code)."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from captioning.config import ConfigError, finetune_config, load_config, parse_overrides
from captioning.core.project import experiment_file
from captioning.core.tracking import run_state
from captioning.models import decoder_names


def _config(args):
    path = args.config
    if path is None and getattr(args, "data", None) is None:
        path = experiment_file("shapes.yaml")  # the embedded dataset's own experiment: a fast encoder, a spatial grid
    return load_config(path, args.set)


TABLE = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "coco_bleu4": "coco BLEU-4",
         "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr-D", "spice": "SPICE"}


def _table(evaluations) -> str:
    """BLEU-1..4 (NLTK), then the COCO metrics that ran here."""
    columns = [k for k in TABLE if evaluations and k in evaluations[0].scores]
    lines = ["| split | decoding | " + " | ".join(TABLE[k] for k in columns) + " | seconds |",
             "|---|---|" + "---|" * (len(columns) + 1)]
    for ev in evaluations:
        decoding = "greedy" if ev.beam_width == 1 else f"beam-{ev.beam_width}"
        lines.append(f"| {ev.split} | {decoding} | " + " | ".join(f"{ev.scores.get(k, float('nan')):.3f}"
                                                                 for k in columns) + f" | {ev.seconds:.1f} |")
    return "\n".join(lines)


def _prepare(config, args):
    from captioning.data.synthetic import dataset_path
    from captioning.features.prepare import load_and_report, prepare

    dataset = load_and_report(dataset_path(args.data), seed=config.seed)
    prepared = prepare(config, dataset)
    _report_features(prepared.stats)
    return prepared


def _features_for(captioner, args):
    """The features of every setting the captioner's decoders read (one, but for an ensemble whose members read
    different ones), prepared and reported: a FeatureCache for pipeline.evaluate."""
    from captioning.data.synthetic import dataset_path
    from captioning.features.prepare import FeatureCache, load_and_report

    features = FeatureCache(load_and_report(dataset_path(args.data), seed=captioner.config.seed))
    for config in captioner.feature_groups:
        _report_features(features(config).stats)
    return features


def _report_features(stats) -> None:
    print(f"features: {stats.images} images, {stats.cache_hits} from cache, {stats.extracted} extracted"
          + (f" in {stats.seconds:.0f}s ({stats.images_per_second:.1f} img/s)" if stats.extracted else ""))


def _out_dir(out: str | None, kind: str) -> Path:
    """--out, or a new folder under outputs/ named by kind and time."""
    return Path(out or run_state("outputs") / datetime.datetime.now().strftime(f"{kind}-%Y%m%d-%H%M%S"))


def _save_and_report(result, out, dataset) -> None:
    """Save the trained captioner with its history and scores, and print them with a few sample captions."""
    out = _out_dir(out, "captioner")
    training = result.training
    result.captioner.save(out)
    start = {"start": training.start} if training.start else {}  # a fine-tuning's starting point, scored
    (out / "metrics.json").write_text(json.dumps({"best_epoch": training.best_epoch, **start,
                                                  "history": training.history, **result.metrics()}, indent=2))
    kept = "the starting weights (no epoch beat them on dev)" if training.best_epoch == 0 else \
        f"best epoch {training.best_epoch} of {len(training.history)}"
    print(f"\n{kept} ({training.seconds:.0f}s training)\n")
    print(_table(result.evaluations))
    last = next((ev for ev in reversed(result.evaluations)), None)
    if last is not None:
        print(f"\nsample {last.split} captions ({'greedy' if last.beam_width == 1 else f'beam-{last.beam_width}'}):")
        for name in list(last.captions)[:5]:
            print(f"  {name}: {last.captions[name]}\n    reference: {dataset.raw_captions[name][0].strip()}")
    print(f"\nsaved the captioner to {out}")


def cmd_train(args) -> None:
    from captioning.training.run import train_and_evaluate

    config = _config(args)
    prepared = _prepare(config, args)
    _save_and_report(train_and_evaluate(config, prepared, verbose=not args.quiet), args.out, prepared.dataset)


def cmd_finetune(args) -> None:
    from captioning.training.run import train_and_evaluate

    start = _load_captioner(args.model)
    if start.members:
        raise ConfigError(f"{args.model} is an ensemble of {len(start.members) + 1} decoders, which are not trained "
                          "together; fine-tune one captioner (e.g. a member's trial model) and ensemble again")
    config = finetune_config(start.config, parse_overrides(args.set))
    prepared = _prepare(config, args)
    checkpoint = Path(args.out) / "finetune-checkpoint.npz" if args.out else None
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    result = train_and_evaluate(config, prepared, verbose=not args.quiet, start=start, checkpoint=checkpoint)
    _save_and_report(result, args.out, prepared.dataset)
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # finished: nothing to resume


def cmd_ensemble(args) -> None:
    from captioning.decoding.captioner import Captioner
    from captioning.evaluation.choices import choose_length_penalty, penalty_line
    from captioning.models.ensemble import EnsembleError

    if len(args.model) < 2:
        raise ConfigError(f"an ensemble needs at least two captioners, got {len(args.model)}: repeat --model")
    try:
        ensemble = Captioner.ensemble([_load_captioner(reference) for reference in args.model])
    except EnsembleError as exc:
        raise ConfigError(f"cannot ensemble {', '.join(args.model)}: {exc}") from None
    features = _features_for(ensemble, args)
    done = {}  # (split, beam width) -> the evaluation the penalty's choice already made
    if ensemble.config.beam_width > 1 and features.dataset.splits["dev"]:
        score = ensemble.config.selection_metric
        tried = choose_length_penalty(ensemble, features, score)
        print(f"ensemble: beam search with {penalty_line(tried, score, ensemble.config.length_penalty)}")
        done[("dev", ensemble.config.beam_width)] = tried[ensemble.config.length_penalty]
    out = _score_and_save(ensemble, features, _out_dir(args.out, "ensemble"), {"members": args.model}, done)
    print(f"\nsaved the ensemble of {len(args.model)} captioners ({len(ensemble.members) + 1} decoders) to {out}")


def _score_and_save(captioner, features, out: Path, record: dict, done: dict | None = None) -> Path:
    """Score a captioner greedy and with its beam on dev and test (`done`: (split, beam width) -> an evaluation
    already made), save it to `out` with metrics.json (`record` and the scores) and print the table."""
    from captioning.evaluation.evaluate import evaluate
    from captioning.training.run import RunResult

    done = done or {}
    evaluations = [done.get((split, width)) or evaluate(captioner, features, split, width)
                   for split in ("dev", "test") if features.dataset.splits[split]
                   for width in sorted({1, captioner.config.beam_width})]
    captioner.save(out)
    (out / "metrics.json").write_text(json.dumps({**record, **RunResult(captioner, None, evaluations).metrics()},
                                                 indent=2))
    print(_table(evaluations))
    return out


def cmd_rerank(args) -> None:
    from captioning.evaluation.choices import RERANK_SCORES, build_neighbours, choose_rerank, rerank_lines

    captioner = _load_captioner(args.model)
    features = _features_for(captioner, args)
    captioner.neighbours = build_neighbours(features(captioner.feature_groups[0]))
    score = args.metric or captioner.config.selection_metric
    if score not in RERANK_SCORES:
        print(f"rerank: the captioner selects by {score}, which decoding does not change; choosing by bleu4")
        score = "bleu4"
    own = captioner.config.beam_width
    tried = choose_rerank(captioner, features, score)
    config = captioner.config
    print("\n".join(rerank_lines(tried, (config.beam_width, config.rerank_neighbours, config.rerank_weight))))
    if config.rerank_neighbours:
        print(f"rerank: beam {config.beam_width}, the {config.rerank_neighbours} nearest training images, weight "
              f"{config.rerank_weight:g}: chosen on dev {score}")
    else:
        captioner.neighbours = None
        print(f"rerank: no re-ranking beat the captioner's own beam of {own} on dev {score}; it is saved as it was, "
              "without an index")
    out = _score_and_save(captioner, features, _out_dir(args.out, "rerank"), {"source": args.model})
    print(f"\nsaved the captioner to {out}")


def _load_captioner(reference: str):
    """A bundle directory, or an MLflow model URI (models:/captioner@champion, runs:/ID/model) in the store that
    $MLFLOW_TRACKING_URI or the working directory names."""
    from captioning.serving.load import load_captioner

    if reference.startswith(("models:/", "runs:/")):
        from captioning.core.tracking import resolve_tracking_uri

        resolve_tracking_uri()
    return load_captioner(reference)


# What evaluate and caption may change (--set), besides --beam.
DECODING_KEYS = ("length_penalty", "no_repeat_ngram", "rerank_neighbours", "rerank_weight")
DECODING_HELP = ("another decoding setting for this command: length_penalty=X, no_repeat_ngram=N, rerank_neighbours=K "
                 "(0: off) or rerank_weight=W (repeatable)")


MAX_BEAM = 50  # on the command line, a local user's own time (REST keeps serving.requests.MAX_BEAM_WIDTH, 10)


def _check_beam(args) -> None:
    beam = getattr(args, "beam", None)
    if beam is not None and not 1 <= beam <= MAX_BEAM:
        raise ConfigError(f"--beam {beam}: give a beam width from 1 (greedy) to {MAX_BEAM}, or leave it out for the "
                          "model's own")


def _decoding(pairs: list[str]) -> dict:
    changes = parse_overrides(pairs)
    other = sorted(set(changes) - set(DECODING_KEYS))
    if other:
        raise ConfigError(f"--set {', '.join(other)}: a trained captioner's model and inputs are fixed; here only "
                          f"its decoding may change ({', '.join(DECODING_KEYS)}, and --beam)")
    from captioning.config import Config

    Config().replace(**changes)  # a bad value is an error before the model loads
    return changes


def _load_for_decoding(args):
    """The captioner of --model with the decoding settings of --set, for this command only."""
    changes = _decoding(args.set)
    captioner = _load_captioner(args.model)
    if changes:
        captioner.config = captioner.config.replace(**changes)
    if captioner.config.rerank_neighbours and captioner.neighbours is None:
        raise ConfigError(f"{args.model} has no neighbour index to re-rank with (rerank_neighbours="
                          f"{captioner.config.rerank_neighbours}); add one with: python -m captioning rerank --model "
                          f"{args.model} --data DATA")
    return captioner


def cmd_evaluate(args) -> None:
    from captioning.evaluation.evaluate import evaluate

    captioner = _load_for_decoding(args)
    features = _features_for(captioner, args)
    width = captioner.config.beam_width if args.beam is None else args.beam
    print(_table([evaluate(captioner, features, args.split, width)]))


def cmd_caption(args) -> None:
    captioner = _load_for_decoding(args)
    alternatives = captioner.caption_alternatives(args.images, args.beam)
    for image, options in zip(args.images, alternatives):
        print(f"{image}: {options[0][0]}" if len(args.images) > 1 else options[0][0])
        if args.alternatives:
            for caption, score in options[1:]:
                print(f"    {score:7.3f}  {caption}")


def cmd_export(args) -> None:
    from captioning.decoding.captioner import Captioner
    from captioning.inference.export import export_captioner

    export_captioner(Captioner.load(Path(args.bundle), use_export=False), Path(args.bundle))


def cmd_relog(args) -> None:
    from captioning.core.tracking import resolve_tracking_uri
    from captioning.serving.mlflow_model import relog_captioner

    resolve_tracking_uri()
    old, new = relog_captioner(args.model)
    if new is None:
        print(f"{args.model} is already logged as code (no pickle); nothing to re-log")
        return
    print(f"registered {new.name} version {new.version}: version {old.version}'s captioner, logged as code (no pickle)")
    if old.aliases:
        print(f"version {old.version} keeps @{', @'.join(old.aliases)}; to move @champion: captioning-registry "
              f"promote {new.version} --reason \"version {old.version} re-logged without pickle\"")


def build_parser() -> argparse.ArgumentParser:
    decoders = ", ".join(decoder_names())
    parser = argparse.ArgumentParser(prog="python -m captioning", description="Train, evaluate and use image "
                                     f"captioners (Xception features; any registered decoder: {decoders}).")
    parser.add_argument("-v", "--verbose", action="store_true", help="also show TensorFlow's and gRPC's own log lines "
                        "(hidden by default)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_options(p):
        p.add_argument("--data", metavar="PATH", help="dataset folder in the Kaggle or original Flickr8k layout "
                       "(default: the embedded synthetic dataset, generated on first use)")

    train = commands.add_parser("train", help="train on the train split, select on dev, score dev and test",
                                description="Train a captioner and save it as a bundle directory.")
    data_options(train)
    train.add_argument("--config", metavar="YAML", help="experiment file (e.g. experiments/flickr8k.yaml); default: "
                       "experiments/shapes.yaml for the embedded dataset, the built-in defaults otherwise")
    train.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                       help="override one config value (repeatable), e.g. --set units=256 --set epochs=5")
    train.add_argument("--out", metavar="DIR", help="where to save the captioner (default: outputs/captioner-TIME)")
    train.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    train.set_defaults(run=cmd_train)

    finetune = commands.add_parser(
        "finetune", help="more self-critical epochs for a trained captioner, selected on dev, scored on dev and test",
        description="Continue a trained captioner (a bundle or a models:/ URI) with self-critical epochs: its "
                    "vocabulary, sizes and features stay; the self-critical settings may change. The starting weights "
                    "are scored on dev first and kept unless an epoch beats them. With --out, an interrupted run "
                    "resumes after its last finished epoch.")
    data_options(finetune)
    finetune.add_argument("--model", required=True, metavar="MODEL", help="captioner bundle directory or MLflow URI")
    finetune.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                          help="override a self-critical setting (repeatable), e.g. --set scst_epochs=6 "
                               "--set scst_learning_rate=1e-4")
    finetune.add_argument("--out", metavar="DIR", help="where to save the captioner (default: outputs/captioner-TIME)")
    finetune.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    finetune.set_defaults(run=cmd_finetune)

    ensemble = commands.add_parser(
        "ensemble", help="decode several captioners as one (the mean of their next-word distributions), scored on "
                         "dev and test", description="Combine captioners that share a vocabulary into one bundle (each "
                         "member reads the features it was trained on), decoded with the first one's settings and a "
                         "length penalty chosen on dev.")
    data_options(ensemble)
    ensemble.add_argument("--model", required=True, action="append", metavar="MODEL",
                          help="a captioner bundle directory or MLflow URI (repeat: two or more)")
    ensemble.add_argument("--out", metavar="DIR", help="where to save the ensemble (default: outputs/ensemble-TIME)")
    ensemble.set_defaults(run=cmd_ensemble)

    rerank = commands.add_parser(
        "rerank", help="add consensus re-ranking to a captioner, chosen on dev, scored on dev and test",
        description="Re-rank a captioner's beam by consensus with the captions of the training images nearest in "
                    "feature space: builds the index from --data's train split, chooses the beam width, the "
                    "number of neighbours and the consensus's weight on dev (or none, if none helps), and saves a "
                    "bundle that carries the index.")
    data_options(rerank)
    rerank.add_argument("--model", required=True, metavar="MODEL", help="captioner bundle directory or MLflow URI")
    rerank.add_argument("--metric", choices=("bleu1", "bleu2", "bleu3", "bleu4", "cider"),  # RERANK_SCORES
                        help="the dev score to choose by (default: the captioner's selection_metric)")
    rerank.add_argument("--out", metavar="DIR", help="where to save the captioner (default: outputs/rerank-TIME)")
    rerank.set_defaults(run=cmd_rerank)

    evaluate = commands.add_parser("evaluate",
                                   help="score a saved captioner on one split with every metric that runs here")
    evaluate.add_argument("--model", required=True, metavar="DIR", help="captioner bundle directory or MLflow model URI")
    data_options(evaluate)
    evaluate.add_argument("--split", default="test", choices=("train", "dev", "test"), help="default: test")
    evaluate.add_argument("--beam", type=int, metavar="K", help=f"beam width, 1 (greedy) to {MAX_BEAM} (default: the "
                          "model's)")
    evaluate.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help=DECODING_HELP)
    evaluate.set_defaults(run=cmd_evaluate)

    caption = commands.add_parser("caption", help="caption image files")
    caption.add_argument("images", nargs="+", metavar="IMAGE")
    caption.add_argument("--model", required=True, metavar="MODEL",
                         help="captioner bundle directory or MLflow model URI, e.g. models:/captioner@champion")
    caption.add_argument("--beam", type=int, metavar="K", help=f"beam width, 1 (greedy) to {MAX_BEAM} (default: the "
                         "model's)")
    caption.add_argument("--alternatives", action="store_true", help="also print the other beams with scores")
    caption.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help=DECODING_HELP)
    caption.set_defaults(run=cmd_caption)

    export = commands.add_parser("export", help="convert a bundle's decoders (and Xception) to OpenVINO IR in its "
                                 "export/ folder, which caption, the app, serving and reports then decode with")
    export.add_argument("bundle", metavar="BUNDLE", help="captioner bundle directory")
    export.set_defaults(run=cmd_export)

    relog = commands.add_parser("relog", help="register a version logged with a pickled wrapper again, as code",
                                description="Register the captioner of a version logged before models from code "
                                "(a pickled python_model.pkl) again as a new version that loads without unpickling.")
    relog.add_argument("model", metavar="MODEL", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    relog.set_defaults(run=cmd_relog)
    for command in commands.choices.values():  # -v after the command too; SUPPRESS: not resetting one before it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="also show TensorFlow's and gRPC's own log lines (hidden by default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:  # before TensorFlow loads, which reads its level once
        import captioning

        os.environ.update(captioning.LIBRARY_LOGS_SHOWN)
    try:
        _check_beam(args)  # before anything loads
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from captioning.data.dataset import DataError
    from captioning.data.images import ImageError
    from captioning.decoding.bundle import BundleError
    from captioning.core.errors import TrainingError
    from captioning.features.weights import WeightsError
    from captioning.inference import ExportError

    try:
        args.run(args)
    except (ConfigError, DataError, ImageError, WeightsError, BundleError, TrainingError, ExportError,
            LookupError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
