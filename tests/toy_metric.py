"""A metric of one file, as a researcher would add one: the share of distinct words among a split's caption words
(higher: more varied captions). Importing this module registers it as `distinct`, scored on dev after every epoch,
so it can select epochs (selection_metric: distinct) and drive a search (--metric dev_distinct)."""
from __future__ import annotations

from captioning.metrics import MetricSpec, register_metric


def distinct_scorer(references, raw_references=None):
    def score(hypotheses: list[list[str]]) -> dict[str, float]:
        words = [word for caption in hypotheses for word in caption]
        return {"distinct": len(set(words)) / max(len(words), 1)}

    return score


SPEC = register_metric(MetricSpec(name="distinct", scorer=distinct_scorer, selects_epochs=True))
