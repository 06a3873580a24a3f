"""A captioner scored on a split: its captions decoded from prepared features and scored with every metric that runs
here (captioning.metrics)."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from captioning.config import Config
from captioning.data.dataset import DataError, Dataset
from captioning.decoding.captioner import Captioner
from captioning.features.prepare import Prepared
from captioning.features.store import MemberInputs
from captioning.metrics import final_scores


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
    return parts[0] if len(parts) == 1 else MemberInputs(parts)


def dataset_of(captioner: Captioner, features: Features) -> Dataset:
    return (features if isinstance(features, Prepared) else features(captioner.feature_groups[0])).dataset


def evaluate(captioner: Captioner, features: Features, split: str, beam_width: int) -> Evaluation:
    """Scores of the captions decoded for a split's images (`features`: see decoder_inputs)."""
    dataset = dataset_of(captioner, features)
    names = dataset.split(split)
    if not names:
        raise DataError(f"the {split} split of {dataset.root} has no usable images; score another --split")
    start = time.perf_counter()
    decoded = captioner.decode_features(decoder_inputs(captioner, features, split), beam_width)
    seconds = time.perf_counter() - start
    hypotheses = [alternatives[0][0].split() for alternatives in decoded]
    scores = final_scores([dataset.captions[name] for name in names], hypotheses,
                          [dataset.raw_captions[name] for name in names])
    return Evaluation(split, beam_width, scores, {n: " ".join(h) for n, h in zip(names, hypotheses)}, seconds)


