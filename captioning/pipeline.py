"""Data -> features -> trained decoder -> scored captions: the one train-and-evaluate function every caller shares."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np

from captioning.captioner import Captioner
from captioning.config import Config, check_finetune
from captioning.consensus import Neighbours, order_by, query_features
from captioning.data import SPLITS, DataError, Dataset, load_dataset
from captioning.encoders import feature_key, make_encoder
from captioning.features import ExtractionStats, ImageInputs, MapView, extract
from captioning.metrics import CiderD, coco_scores, corpus_bleu_scores, start_java_scorers
from captioning.text import Vocabulary
from captioning.train import EpochCallback, TrainResult, train_decoder


@dataclasses.dataclass
class Prepared:
    """A dataset with the features of its images for one encoder setting."""

    dataset: Dataset
    features: dict[str, np.ndarray]  # split -> (images, dim), rows in dataset.splits[split] order
    stats: ExtractionStats
    mirrored: dict[str, np.ndarray] | None = None  # the mirrored images' features, with feature_flip: augment
    maps: dict[str, MapView] | None = None  # split -> the images' spatial maps, read when indexed
    mirrored_maps: dict[str, MapView] | None = None  # with feature_flip: augment

    def inputs(self, split: str, decoder: str, mirrored: bool = False):
        """What a decoder reads for a split's images: the feature vectors (merge), or them and the maps."""
        features = (self.mirrored if mirrored else self.features)[split]
        if decoder != "attention":
            return features
        return ImageInputs(features, (self.mirrored_maps if mirrored else self.maps)[split])


def load_and_report(data: Path, seed: int = 0, log: Callable[[str], None] = print) -> Dataset:
    dataset = load_dataset(data, seed=seed)
    counts = ", ".join(f"{split} {len(dataset.splits[split])}" for split in SPLITS)
    split_kind = "official split" if dataset.official_split else "seeded split (not official)"
    log(f"data: {dataset.root}: {len(dataset.images)} usable images ({counts}; {split_kind})")
    for line in dataset.report.lines():
        log(f"data: {line}")
    return dataset


def prepare(config: Config, dataset: Dataset, progress: bool = True) -> Prepared:
    """Features of every image, from the cache or extracted; with feature_flip, of the mirrored images too, averaged
    with the plain ones (flip_mode: average) or kept beside them for training (augment)."""
    names = sorted(dataset.images)  # every usable image, in a split or not, so that the cache is complete
    matrix, maps, stats = extract(names, dataset.images, dataset.info, make_encoder(config), progress=progress)
    mirrored = mirrored_maps = None
    if config.feature_flip:
        mirrored, mirrored_maps, more = extract(names, dataset.images, dataset.info,
                                                make_encoder(config, mirrored=True), progress=progress)
        stats = ExtractionStats(images=stats.images, cache_hits=stats.cache_hits + more.cache_hits,
                                extracted=stats.extracted + more.extracted, seconds=stats.seconds + more.seconds)
        if config.flip_mode == "average":
            matrix, mirrored = (matrix + mirrored) / 2, None
            maps, mirrored_maps = MapView(maps.parts + mirrored_maps.parts), None
    row = {name: i for i, name in enumerate(names)}
    rows = {split: np.array([row[n] for n in dataset.splits[split]], np.int64) for split in SPLITS}
    by_split = lambda m: {split: m[rows[split]] for split in SPLITS}
    view = lambda v: {split: MapView([(array, indices[rows[split]]) for array, indices in v.parts]) for split in SPLITS}
    return Prepared(dataset, by_split(matrix), stats, None if mirrored is None else by_split(mirrored),
                    view(maps), None if mirrored_maps is None else view(mirrored_maps))


class FeatureCache:
    """A dataset's prepared features for each feature setting (feature_key) that a caller asks for, prepared once:
    the trials of a search and the registry's scoring share them. Called with a config, it returns them."""

    def __init__(self, dataset: Dataset, progress: bool = True):
        self.dataset, self.progress = dataset, progress
        self._prepared: dict[str, Prepared] = {}

    def get(self, config: Config) -> tuple[Prepared, int]:
        """The features, and how many images came from the disk cache (all of them once prepared here)."""
        key = feature_key(config)
        if key in self._prepared:
            return self._prepared[key], len(self.dataset.images)
        prepared = self._prepared[key] = prepare(config, self.dataset, progress=self.progress)
        return prepared, prepared.stats.cache_hits

    def __call__(self, config: Config) -> Prepared:
        return self.get(config)[0]


@dataclasses.dataclass
class Evaluation:
    split: str
    beam_width: int
    scores: dict[str, float]  # NLTK bleu1..4 and the COCO metrics (captioning.metrics.METRICS) that run here
    captions: dict[str, str]  # image name -> generated caption
    seconds: float


Features = Prepared | Callable[[Config], Prepared]  # one setting's features, or any setting's (a FeatureCache)


def decoder_inputs(captioner: Captioner, features: Features, split: str):
    """What the captioner's decoders read for a split's images: from `features` prepared for its config, or, for an
    ensemble whose members read different features, MemberInputs from a FeatureCache."""
    groups = captioner.feature_groups
    if isinstance(features, Prepared):
        if len(groups) > 1:
            raise ValueError("this ensemble's members read different features: pass a FeatureCache, not one "
                             "setting's features")
        return features.inputs(split, captioner.config.decoder)
    parts = [features(config).inputs(split, config.decoder) for config in groups]
    if len(parts) == 1:
        return parts[0]
    from captioning.ensemble import MemberInputs

    return MemberInputs(parts)


def _dataset_of(captioner: Captioner, features: Features) -> Dataset:
    return (features if isinstance(features, Prepared) else features(captioner.feature_groups[0])).dataset


def evaluate(captioner: Captioner, features: Features, split: str, beam_width: int) -> Evaluation:
    """Scores of the captions decoded for a split's images (`features`: see decoder_inputs)."""
    dataset = _dataset_of(captioner, features)
    names = dataset.split(split)
    if not names:
        raise DataError(f"the {split} split of {dataset.root} has no usable images; score another --split")
    start = time.perf_counter()
    decoded = captioner.decode_features(decoder_inputs(captioner, features, split), beam_width)
    seconds = time.perf_counter() - start
    hypotheses = [alternatives[0][0].split() for alternatives in decoded]
    scores = corpus_bleu_scores([dataset.captions[name] for name in names], hypotheses)
    scores |= coco_scores([dataset.raw_captions[name] for name in names], [" ".join(h) for h in hypotheses])
    return Evaluation(split, beam_width, scores, {n: " ".join(h) for n, h in zip(names, hypotheses)}, seconds)


# Length penalties an ensemble's beam search is tried with on dev, beside its first member's own.
ENSEMBLE_LENGTH_PENALTIES = (0.5, 1.0, 1.5)


def choose_length_penalty(captioner: Captioner, features: Features, score: str) -> dict[float, Evaluation]:
    """An ensemble's length penalty for beam search, chosen on dev by `score` (a score name, e.g. bleu4): its first
    member's was chosen for one model, and the mean of the members' distributions is flatter (the 2026-11-30
    Flickr8k champion, three trials, scored dev BLEU-4 0.2382 / 0.2400 / 0.2337 with 0.5 / 1 / 1.5). Sets the best
    on `captioner.config` (a tie keeps the member's own) and returns each penalty's dev evaluation."""
    tried = {}
    for penalty in dict.fromkeys((captioner.config.length_penalty, *ENSEMBLE_LENGTH_PENALTIES)):
        captioner.config = captioner.config.replace(length_penalty=penalty)
        tried[penalty] = evaluate(captioner, features, "dev", captioner.config.beam_width)
    best = max(tried, key=lambda penalty: tried[penalty].scores[score])
    captioner.config = captioner.config.replace(length_penalty=best)
    return tried


def penalty_line(tried: dict[float, Evaluation], score: str, chosen: float) -> str:
    return (f"length_penalty {chosen:g}, chosen on dev {score} (" +
            ", ".join(f"{penalty:g}: {ev.scores[score]:.4f}" for penalty, ev in tried.items()) + ")")


def build_neighbours(prepared: Prepared) -> Neighbours:
    """The consensus re-ranking index of a dataset's train split, with `prepared`'s features (those of the
    captioner's first feature group)."""
    names = prepared.dataset.split("train")
    if not names:
        raise DataError(f"{prepared.dataset.root} has no train images to find neighbours among")
    return Neighbours(prepared.features["train"],
                      [[" ".join(c) for c in prepared.dataset.captions[name]] for name in names])


# What an index's re-ranking is tried with on dev: beam widths (beside the captioner's own), neighbours, weights.
RERANK_WIDTHS = (3, 5, 10)
RERANK_NEIGHBOURS = (5, 10, 20)
RERANK_WEIGHTS = (0.25, 0.5, 0.75)
# The dev scores a re-ranking can be chosen by (the config's selection_metric, unless it is the loss).
RERANK_SCORES = ("bleu1", "bleu2", "bleu3", "bleu4", "cider")


def choose_rerank(captioner: Captioner, features: Features, score: str) -> dict[tuple[int, int, float], dict]:
    """Consensus re-ranking chosen on dev by `score` (one of RERANK_SCORES) among the captioner's own beam and each
    beam width x neighbours x weight above: each width is decoded once and re-ranked every way (the plain beams of
    the other widths are scored for the table, not chosen). Sets the best on `captioner.config` (a tie keeps the
    plainer) and returns each setting's dev BLEU-1..4 and CIDEr-D (this project's, on cleaned tokens), keyed (beam
    width, neighbours, weight); neighbours 0 is no re-ranking. `captioner.neighbours` must be set."""
    dataset = _dataset_of(captioner, features)
    names = dataset.split("dev")
    if not names:
        raise DataError(f"the dev split of {dataset.root} has no usable images to choose the re-ranking on")
    references = [dataset.captions[name] for name in names]
    cider = CiderD(references)
    inputs = decoder_inputs(captioner, features, "dev")
    queries = query_features(inputs)
    plain = captioner.config.replace(rerank_neighbours=0)
    captioner.config = plain
    tried = {}

    def measure(alternatives):
        hypotheses = [options[0][0].split() for options in alternatives]
        return corpus_bleu_scores(references, hypotheses) | {"cider": cider.corpus_score(hypotheses)}

    for width in dict.fromkeys((plain.beam_width, *RERANK_WIDTHS)):
        alternatives = captioner.decode_features(inputs, width)
        tried[(width, 0, plain.rerank_weight)] = measure(alternatives)
        if width <= 1:  # greedy: one caption, nothing to re-rank
            continue
        for k in RERANK_NEIGHBOURS:
            consensus = captioner.neighbours.consensus([[c for c, _ in o] for o in alternatives], queries, k)
            for weight in RERANK_WEIGHTS:
                tried[(width, k, weight)] = measure(order_by(alternatives, consensus, weight)[0])
    eligible = [key for key in tried if key[1] or key[0] == plain.beam_width]
    width, k, weight = max(eligible, key=lambda key: tried[key][score])  # the first of equals: the plainest
    captioner.config = plain.replace(beam_width=width, rerank_neighbours=k, rerank_weight=weight)
    return tried


def rerank_lines(tried: dict[tuple[int, int, float], dict], chosen: tuple[int, int, float]) -> list[str]:
    """A table of the re-ranking settings tried on dev, the chosen one marked."""
    lines = ["| beam | neighbours | weight | dev BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D |",
             "|---|---|---|---|---|---|---|---|"]
    for (width, k, weight), scores in tried.items():
        mark = " (chosen)" if (width, k, weight) == chosen else ""
        lines.append(f"| {width} | {k or 'off'} | {weight:g} | " +
                     " | ".join(f"{scores[name]:.4f}" for name in RERANK_SCORES) + f"{mark} |")
    return lines


@dataclasses.dataclass
class RunResult:
    captioner: Captioner
    training: TrainResult
    evaluations: list[Evaluation]

    def metrics(self) -> dict[str, float]:
        """Flat names: dev_bleu4 with the config's decoding (beam_width), dev_greedy_bleu4 with greedy decoding."""
        out = {}
        for ev in self.evaluations:
            if ev.beam_width == 1:
                out.update({f"{ev.split}_greedy_{k}": v for k, v in ev.scores.items()})
            if ev.beam_width == self.captioner.config.beam_width:
                out.update({f"{ev.split}_{k}": v for k, v in ev.scores.items()})
        return out


def train_and_evaluate(config: Config, prepared: Prepared, epoch_callback: EpochCallback | None = None,
                       eval_splits: tuple[str, ...] = ("dev", "test"), verbose: bool = True,
                       checkpoint: Path | None = None,
                       after_teacher_forcing: Callable[[Captioner], None] | None = None,
                       start: Captioner | None = None) -> RunResult:
    """Build the vocabulary on train, train with dev selection, then score greedy and beam on `eval_splits`.
    `checkpoint`: a file that keeps the training's state after every epoch, and resumes it (see train_decoder).
    `after_teacher_forcing`: called with the best teacher-forced captioner before a self-critical stage starts.
    `start`: a trained captioner to fine-tune (its vocabulary and weights; `config` is its own with other
    self-critical settings): only the self-critical stage runs."""
    dataset = prepared.dataset
    start_java_scorers()  # METEOR's start takes seconds of loading: let it overlap with the training
    train_names, dev_names = dataset.split("train"), dataset.split("dev")
    vocab = Vocabulary.build((c for name in train_names for c in dataset.captions[name]), config.vocab_min_count)
    if start is not None:
        check_finetune(start.config, config)
        if start.vocab.words != vocab.words:  # (words are counted on the train split: the same data, the same list)
            raise DataError(f"the captioner to fine-tune was trained on other captions than {dataset.root}'s train "
                            f"split (a vocabulary of {len(start.vocab.words)} words; this split gives "
                            f"{len(vocab.words)}); give the dataset it was trained on with --data")
        vocab = start.vocab
    mirrored = prepared.mirrored is not None
    neighbours = build_neighbours(prepared) if config.rerank_neighbours else None  # for the final decoding only
    training = train_decoder(config, vocab, prepared.inputs("train", config.decoder),
                             [dataset.captions[n] for n in train_names], prepared.inputs("dev", config.decoder),
                             [dataset.captions[n] for n in dev_names],
                             epoch_callback=epoch_callback, verbose=verbose, checkpoint=checkpoint,
                             train_mirrored=prepared.inputs("train", config.decoder, mirrored=True) if mirrored else None,
                             after_teacher_forcing=after_teacher_forcing and (
                                 lambda model: after_teacher_forcing(Captioner(config, vocab, model,
                                                                               neighbours=neighbours))),
                             start_weights=None if start is None else start.model.get_weights())
    captioner = Captioner(config, vocab, training.model, neighbours=neighbours)
    widths = sorted({1, config.beam_width})
    evaluations = [evaluate(captioner, prepared, split, width) for split in eval_splits
                   if dataset.splits[split] for width in widths]
    return RunResult(captioner, training, evaluations)
