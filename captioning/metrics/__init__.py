"""Caption metrics: the registry of scores a split is scored with, each computed by a scorer in this folder.

A metric registers a `MetricSpec`: its name, its direction, whether it needs Java (and why it cannot run here, when
it cannot), whether it is scored on dev after every epoch (then it can be `selection_metric`, choose the epoch kept,
and drive a search's `--metric` with a pruner watching it), and its scorer. A scorer is a callable
`scorer(references, raw_references)` that returns `score(hypotheses) -> {name: value}`: references[i] are image i's
cleaned reference captions (word lists), raw_references[i] the same captions as written (None on dev after an
epoch), hypotheses[i] its caption (a word list). Metrics that share one scorer object are computed by one call.

    from captioning.metrics import MetricSpec, register_metric

    def length_scorer(references, raw_references=None):
        return lambda hypotheses: {"length": sum(map(len, hypotheses)) / len(hypotheses)}

    register_metric(MetricSpec(name="length", scorer=length_scorer, selects_epochs=True))

tests/toy_metric.py is a complete one. The built-in metrics are registered below, importing their scorers only when
first used.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from captioning.core.plugins import Registry, lazy

Scorer = Callable[..., Callable[[list[list[str]]], dict[str, float]]]


class MetricError(ValueError):
    """A metric that was asked for by name cannot be computed here."""


REGISTRY = Registry("metric", MetricError)
metric_names, register_metric = REGISTRY.names, REGISTRY.register


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    scorer: Scorer  # the final score of a split (evaluation, the search's dev and test scores)
    higher_is_better: bool = True
    needs_java: bool = False
    selects_epochs: bool = False  # also scored on dev after every epoch (with dev_scorer, when given)
    dev_scorer: Scorer | None = None  # the per-epoch scorer, when it differs from the final one
    watch: str | None = None  # for a metric not scored every epoch: the one that is, which a pruner watches instead
    unavailable: Callable[[], str | None] | None = None  # why it cannot run here (None: it can)


def epoch_metrics() -> tuple[str, ...]:
    """The metrics scored on dev after every epoch."""
    return tuple(name for name, spec in REGISTRY.items() if spec.selects_epochs)


def metric_spec(metric: str) -> MetricSpec:
    """The spec of a metric, given bare ("meteor") or as a logged name ("dev_meteor", "test_greedy_cider")."""
    name = metric
    for prefix in ("dev_", "test_", "train_", "greedy_"):
        name = name.removeprefix(prefix)
    if name not in REGISTRY:
        raise MetricError(f"unknown metric {metric!r}; metrics: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def unavailable(metric: str) -> str | None:
    """Why `metric` (e.g. "meteor", "dev_meteor", "test_greedy_cider") cannot be computed here, or None."""
    spec = metric_spec(metric)
    return spec.unavailable() if spec.unavailable is not None else None


def watched(metric: str) -> str:
    """The per-epoch metric that stands for `metric` while a trial trains (itself, when it is scored every epoch)."""
    spec = metric_spec(metric)
    return spec.name if spec.selects_epochs else (spec.watch or epoch_metrics()[0])


def _run(scorers: dict, references, raw_references, hypotheses) -> dict[str, float]:
    scores: dict[str, float] = {}
    for scorer, names in scorers.items():
        found = scorer(references, raw_references)(hypotheses)
        scores.update({name: value for name, value in found.items() if name in names})
    return scores


def final_scores(references: list[list[list[str]]], hypotheses: list[list[str]],
                 raw_references: list[list[str]]) -> dict[str, float]:
    """Every registered metric that runs here, of captions `hypotheses` (word lists) against their references."""
    scorers: dict = {}
    for spec in REGISTRY.values():
        scorers.setdefault(spec.scorer, set()).add(spec.name)
    return _run(scorers, references, raw_references, hypotheses)


def epoch_scorer(references: list[list[list[str]]]) -> Callable[[list[list[str]]], dict[str, float]]:
    """hypotheses -> the per-epoch dev scores, each scorer prepared once for these references."""
    groups: dict = {}
    for spec in REGISTRY.values():
        if spec.selects_epochs:
            groups.setdefault(spec.dev_scorer or spec.scorer, set()).add(spec.name)
    prepared = [(scorer(references, None), names) for scorer, names in groups.items()]

    def score(hypotheses: list[list[str]]) -> dict[str, float]:
        out: dict[str, float] = {}
        for run, names in prepared:
            out.update({name: value for name, value in run(hypotheses).items() if name in names})
        return out

    return score


_BLEU = lazy("captioning.metrics.bleu", "bleu_scorer")
_COCO = lazy("captioning.metrics.coco", "coco_scorer")
_CIDER = lazy("captioning.metrics.cider", "cider_scorer")
for _n in range(1, 5):
    register_metric(MetricSpec(f"bleu{_n}", _BLEU, selects_epochs=True))
for _n in range(1, 5):
    register_metric(MetricSpec(f"coco_bleu{_n}", _COCO, watch=f"bleu{_n}"))
register_metric(MetricSpec("meteor", _COCO, needs_java=True, watch="cider",
                           unavailable=lazy("captioning.metrics.coco", "meteor_missing")))
register_metric(MetricSpec("rouge_l", _COCO, watch="cider"))
# CIDEr-D: per epoch the project's own (cleaned tokens, dev document frequencies counted once); a split's final
# score is pycocoevalcap's, on PTB tokens.
register_metric(MetricSpec("cider", _COCO, selects_epochs=True, dev_scorer=_CIDER))
register_metric(MetricSpec("spice", _COCO, needs_java=True, watch="cider",
                           unavailable=lazy("captioning.metrics.coco", "spice_missing")))
METRICS = metric_names()  # the built-in metrics (metric_names() also has those registered since)
