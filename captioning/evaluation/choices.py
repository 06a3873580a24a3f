"""Decoding settings chosen on dev after training: an ensemble's length penalty, and the consensus re-ranking (beam
width, neighbours, weight) of a captioner with a neighbour index."""
from __future__ import annotations

from captioning.data.dataset import DataError
from captioning.decoding.captioner import Captioner
from captioning.decoding.consensus import Neighbours, order_by, query_features
from captioning.evaluation.evaluate import Evaluation, Features, dataset_of, decoder_inputs, evaluate
from captioning.features.prepare import Prepared
from captioning.metrics import metric_spec
from captioning.metrics.bleu import corpus_bleu_scores
from captioning.metrics.cider import CiderD

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
# The dev scores every re-ranking is shown with, computed here (BLEU on cleaned tokens, this project's CIDEr-D); a
# re-ranking can be chosen by any of them (the config's selection_metric, unless it is the loss) or by any other
# registered metric, which is then scored with its own scorer for every setting as well.
RERANK_SCORES = ("bleu1", "bleu2", "bleu3", "bleu4", "cider")


def choose_rerank(captioner: Captioner, features: Features, score: str, widths=RERANK_WIDTHS,
                  neighbours=RERANK_NEIGHBOURS, weights=RERANK_WEIGHTS) -> dict[tuple[int, int, float], dict]:
    """Consensus re-ranking chosen on dev by `score` (one of RERANK_SCORES, or another registered metric's name,
    e.g. meteor) among the captioner's own decoding and each beam width x neighbours x weight given: each width is
    decoded once and re-ranked every way (the plain beams of the other widths are scored for the table, not chosen).
    A captioner that re-ranks already has its own neighbours and weight tried too, so the choice is never below its
    own decoding on dev. Sets the best on `captioner.config` (a tie keeps the plainer) and returns each setting's
    dev BLEU-1..4 and CIDEr-D (this project's, on cleaned tokens; and `score`, if it is another), keyed (beam width,
    neighbours, weight); neighbours 0 is no re-ranking. `captioner.neighbours` must be set."""
    dataset = dataset_of(captioner, features)
    names = dataset.split("dev")
    if not names:
        raise DataError(f"the dev split of {dataset.root} has no usable images to choose the re-ranking on")
    references = [dataset.captions[name] for name in names]
    cider = CiderD(references)
    other = None if score in RERANK_SCORES else metric_spec(score).scorer(
        references, [dataset.raw_captions[name] for name in names])
    inputs = decoder_inputs(captioner, features, "dev")
    queries = query_features(inputs)
    own = captioner.config
    if own.rerank_neighbours:
        neighbours = tuple(dict.fromkeys((own.rerank_neighbours, *neighbours)))
        weights = tuple(dict.fromkeys((own.rerank_weight, *weights)))
    plain = own.replace(rerank_neighbours=0)
    captioner.config = plain
    tried = {}

    def measure(alternatives):
        hypotheses = [options[0][0].split() for options in alternatives]
        scores = corpus_bleu_scores(references, hypotheses) | {"cider": cider.corpus_score(hypotheses)}
        return scores if other is None else scores | {score: other(hypotheses)[score]}

    for width in dict.fromkeys((plain.beam_width, *widths)):
        alternatives = captioner.decode_features(inputs, width)
        tried[(width, 0, plain.rerank_weight)] = measure(alternatives)
        if width <= 1:  # greedy: one caption, nothing to re-rank
            continue
        for k in neighbours:
            consensus = captioner.neighbours.consensus([[c for c, _ in o] for o in alternatives], queries, k)
            for weight in weights:
                tried[(width, k, weight)] = measure(order_by(alternatives, consensus, weight)[0])
    eligible = [key for key in tried if key[1] or key[0] == plain.beam_width]
    width, k, weight = max(eligible, key=lambda key: tried[key][score])  # the first of equals: the plainest
    captioner.config = plain.replace(beam_width=width, rerank_neighbours=k, rerank_weight=weight)
    return tried


def rerank_lines(tried: dict[tuple[int, int, float], dict], chosen: tuple[int, int, float]) -> list[str]:
    """A table of the re-ranking settings tried on dev, the chosen one marked."""
    extra = [name for name in next(iter(tried.values()), {}) if name not in RERANK_SCORES]
    lines = ["| beam | neighbours | weight | dev BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | CIDEr-D |"
             + "".join(f" {name} |" for name in extra), "|---|---|---|---|---|---|---|---|" + "---|" * len(extra)]
    for (width, k, weight), scores in tried.items():
        mark = " (chosen)" if (width, k, weight) == chosen else ""
        lines.append(f"| {width} | {k or 'off'} | {weight:g} | " +
                     " | ".join(f"{scores[name]:.4f}" for name in (*RERANK_SCORES, *extra)) + f"{mark} |")
    return lines
