"""Caption metrics.

- `corpus_bleu_scores`: NLTK corpus BLEU-1..4 on our cleaned tokens, the workbench's own BLEU since the seed.
- `coco_scores`: the COCO caption metrics as the field reports them, computed by `pycocoevalcap`: BLEU-1..4 on PTB
  tokens (`coco_bleu1..4`), METEOR, ROUGE-L and CIDEr-D (`cider`), and SPICE when it can run. The PTB tokenizer
  and METEOR run on Java: without `java` they are skipped (one line says so) and the others use our cleaned tokens.
- `CiderD`: CIDEr-D against a fixed set of references whose document frequencies are counted once, for the
  self-critical reward (thousands of captions a step) and per-epoch model selection; equal to pycocoevalcap's
  `Cider` when the references are the scored set's own (tested).
"""
from __future__ import annotations

import collections
import contextlib
import io
import math
import os
import shutil
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from nltk.translate.bleu_score import corpus_bleu

from captioning.text import clean_caption

BLEU_WEIGHTS = {
    "bleu1": (1.0, 0.0, 0.0, 0.0),
    "bleu2": (0.5, 0.5, 0.0, 0.0),
    "bleu3": (1 / 3, 1 / 3, 1 / 3, 0.0),
    "bleu4": (0.25, 0.25, 0.25, 0.25),
}
COCO_METRICS = ("coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4", "meteor", "rouge_l", "cider", "spice")
METRICS = tuple(BLEU_WEIGHTS) + COCO_METRICS  # every metric a split is scored with, when it can run here
JAVA_METRICS = ("meteor", "spice")


class MetricError(ValueError):
    """A metric that was asked for by name cannot be computed here."""


def corpus_bleu_scores(references: list[list[list[str]]], hypotheses: list[list[str]]) -> dict[str, float]:
    """references[i] holds the cleaned reference captions (word lists) of image i; hypotheses[i] its caption."""
    _check_lengths(references, hypotheses)
    with warnings.catch_warnings():  # NLTK warns when a hypothesis has no n-gram overlap; the score is then 0
        warnings.simplefilter("ignore")
        return {name: float(corpus_bleu(references, hypotheses, weights=weights))
                for name, weights in BLEU_WEIGHTS.items()}


def _check_lengths(references, hypotheses) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    if not hypotheses:
        raise ValueError("no captions to score")


# --- What can run here -------------------------------------------------------------------------------------------

_SAID: set[str] = set()


def _notice(line: str) -> None:
    """Print a line once per process (a search scores hundreds of splits)."""
    if line not in _SAID:
        _SAID.add(line)
        print(f"metrics: {line}", file=sys.stderr, flush=True)


def java_available() -> bool:
    """Whether the Java-based scorers run: `java` is on PATH and $CAPTIONING_JAVA_METRICS is not `off` (which skips
    them on purpose, e.g. for quick tests: each process pays seconds to start METEOR)."""
    return os.environ.get("CAPTIONING_JAVA_METRICS", "on").lower() != "off" and _java_on_path()


@lru_cache(maxsize=None)
def _java_on_path() -> bool:
    return shutil.which("java") is not None


def _package_dir() -> Path:
    import pycocoevalcap  # a namespace package: no __file__

    return Path(list(pycocoevalcap.__path__)[0])


@contextlib.contextmanager
def _quiet_stderr():
    """Silence what a Java child process writes to our stderr (the PTB tokenizer reports its speed there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _spice_missing() -> str | None:
    """Why SPICE cannot run here, or None."""
    if not java_available():
        return "SPICE skipped: it runs on Java, which is not on PATH or is turned off (CAPTIONING_JAVA_METRICS=off)"
    lib = _package_dir() / "spice" / "lib"
    if not (lib / "stanford-corenlp-3.6.0.jar").is_file() or not (lib / "stanford-corenlp-3.6.0-models.jar").is_file():
        return ("SPICE skipped: it needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads at first use (no "
                f"download here); put stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar into {lib}")
    return _SPICE_FAILED[0] if _SPICE_FAILED else None


_SPICE_FAILED: list[str] = []


def unavailable(metric: str) -> str | None:
    """Why `metric` (e.g. "meteor", "dev_meteor", "test_greedy_cider") cannot be computed here, or None."""
    name = metric
    for prefix in ("dev_", "test_", "train_", "greedy_"):
        name = name.removeprefix(prefix)
    if name not in METRICS:
        raise MetricError(f"unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    if name == "meteor" and not java_available():
        if _java_on_path():
            return "METEOR runs on Java, which CAPTIONING_JAVA_METRICS=off turns off"
        return "METEOR runs on Java and no `java` is on PATH (install a Java runtime, e.g. default-jre-headless)"
    if name == "spice":
        return _spice_missing()
    return None


# --- The COCO caption metrics ------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _meteor():
    """One METEOR process per Python process: its start (loading the paraphrase table) costs seconds."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def start_java_scorers() -> None:
    """Start METEOR's process now (it loads for seconds, in parallel with whatever runs next), if Java is here."""
    if java_available():
        _meteor()


def _tokenize(texts: dict[int, list[str]]) -> dict[int, list[str]]:
    """PTB-tokenized, lower-cased, punctuation removed (pycocoevalcap's own tokenizer), or our cleaning without Java."""
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        # The tokenizer keeps one line per caption; an empty caption would shift every line after it.
        present = {k: [{"caption": t} for t in v if t.strip()] for k, v in texts.items()}
        try:
            with _quiet_stderr():
                tokens = PTBTokenizer().tokenize({k: v for k, v in present.items() if v})
            return {k: tokens.get(k, []) + [""] * (len(texts[k]) - len(present[k])) for k in texts}
        except (OSError, ValueError) as exc:  # e.g. a read-only site-packages, where it writes its input file
            _notice(f"the PTB tokenizer failed ({exc}); using our own cleaned tokens")
    elif _java_on_path():
        _notice("METEOR and the PTB tokenizer skipped: CAPTIONING_JAVA_METRICS=off; BLEU, ROUGE-L and CIDEr-D use "
                "our own cleaned tokens")
    else:
        _notice("METEOR and the PTB tokenizer skipped: no `java` on PATH (install a Java runtime, e.g. "
                "default-jre-headless); BLEU, ROUGE-L and CIDEr-D use our own cleaned tokens")
    return {k: [" ".join(clean_caption(t)) for t in v] for k, v in texts.items()}


def coco_scores(references: list[list[str]], hypotheses: list[str]) -> dict[str, float]:
    """Corpus scores of the COCO caption metrics that can run here; references[i] are image i's raw reference
    captions, hypotheses[i] its generated caption (a string)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    _check_lengths(references, hypotheses)
    gts = _tokenize({i: list(refs) for i, refs in enumerate(references)})
    res = {i: toks for i, toks in _tokenize({i: [h] for i, h in enumerate(hypotheses)}).items()}
    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram statistics
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores.update({f"coco_bleu{n + 1}": float(b) for n, b in enumerate(bleu)})
    if java_available():
        scores["meteor"] = float(_meteor().compute_score(gts, res)[0])
    scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    scores["cider"] = float(Cider().compute_score(gts, res)[0])
    spice = _spice(gts, res)
    if spice is not None:
        scores["spice"] = spice
    return scores


def _spice(gts, res) -> float | None:
    why = _spice_missing()
    if why is not None:
        _notice(why)
        return None
    from pycocoevalcap.spice.spice import Spice

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return float(Spice().compute_score(gts, res)[0])
    except Exception as exc:  # e.g. its LMDB cache library on this Java version
        _SPICE_FAILED.append(f"SPICE skipped: it failed here ({type(exc).__name__}: {exc})")
        _notice(_SPICE_FAILED[0])
        return None


# --- CIDEr-D against fixed references ----------------------------------------------------------------------------

def _ngram_counts(words: list[str], n: int) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for k in range(1, n + 1):
        counts.update(tuple(words[i:i + k]) for i in range(len(words) - k + 1))
    return counts


class SentenceBleu:
    """Sentence-level BLEU-4 of captions against the references given here (clipped n-gram precisions; orders 2-4
    smoothed by adding 1 to their counts, Lin and Och 2004, as NLTK's method2; the brevity penalty against the
    closest reference length, the shorter on a tie): a self-critical reward that also asks for captions no shorter
    than the references."""

    def __init__(self, references: list[list[list[str]]], n: int = 4):
        self.n = n
        self.clips, self.lengths = [], []
        for refs in references:
            clip: collections.Counter = collections.Counter()
            for ref in refs:
                clip |= _ngram_counts(ref, n)  # the most times each n-gram occurs in one reference
            self.clips.append(clip)
            self.lengths.append(sorted({len(ref) for ref in refs}))

    def scores(self, hypotheses: list[list[str]], images: list[int] | None = None) -> np.ndarray:
        """The BLEU-4 of each hypothesis against the references of image images[k] (default: the k-th)."""
        images = range(len(hypotheses)) if images is None else images
        out = np.zeros(len(hypotheses))
        for k, (words, image) in enumerate(zip(hypotheses, images)):
            length = len(words)
            if length == 0:
                continue
            clip = self.clips[image]
            matches = [0] * self.n
            for gram, count in _ngram_counts(words, self.n).items():
                matches[len(gram) - 1] += min(count, clip.get(gram, 0))
            if matches[0] == 0:
                continue
            log_precision = math.log(matches[0] / length)
            for order in range(2, self.n + 1):
                log_precision += math.log((matches[order - 1] + 1) / (max(length - order + 1, 1) + 1))
            closest = min(self.lengths[image], key=lambda r: (abs(r - length), r))
            brevity = 0.0 if length >= closest else 1.0 - closest / length
            out[k] = math.exp(brevity + log_precision / self.n)
        return out


class CiderD:
    """CIDEr-D (n-grams 1..4, clipped tf-idf, Gaussian length penalty with sigma 6, times 10) of captions against
    the references given here, whose document frequencies are counted once. With the scored set's own references
    it equals pycocoevalcap's `Cider`; with the train split's, it is the self-critical reward."""

    def __init__(self, references: list[list[list[str]]], n: int = 4, sigma: float = 6.0):
        self.n, self.sigma = n, sigma
        counts = [[_ngram_counts(ref, n) for ref in refs] for refs in references]
        df: collections.Counter = collections.Counter()
        for refs in counts:
            df.update({gram for ref in refs for gram in ref})
        self.log_images = math.log(float(len(references)))
        self.log_df = {gram: math.log(max(1.0, d)) for gram, d in df.items()}
        self.refs = [[self._vector(ref) for ref in refs] for refs in counts]

    def _vector(self, counts: collections.Counter):
        """tf-idf weights by n-gram, the norm of each order's part, and the length as pycocoevalcap counts it."""
        weights, norms, length = {}, [0.0] * self.n, 0
        for gram, tf in counts.items():
            w = tf * (self.log_images - self.log_df.get(gram, 0.0))
            weights[gram] = w
            norms[len(gram) - 1] += w * w
            if len(gram) == 2:  # pycocoevalcap's "length" counts bigrams (its `n == 1` is the second order)
                length += tf
        return weights, [math.sqrt(x) for x in norms], length

    def scores(self, hypotheses: list[list[str]], images: list[int] | None = None) -> np.ndarray:
        """The CIDEr-D of each hypothesis against the references of image images[k] (default: the k-th)."""
        images = range(len(hypotheses)) if images is None else images
        return np.array([self._score(self._vector(_ngram_counts(words, self.n)), image)
                         for words, image in zip(hypotheses, images)], np.float64)

    def mean_scores(self, hypotheses: list[list[str]], images: list[Sequence[int]]) -> np.ndarray:
        """Each hypothesis's mean CIDEr-D over the images images[k] (each against its own references)."""
        out = np.zeros(len(hypotheses))
        for k, (words, group) in enumerate(zip(hypotheses, images)):
            vector = self._vector(_ngram_counts(words, self.n))
            out[k] = sum(self._score(vector, image) for image in group) / max(len(group), 1)
        return out

    def _score(self, vector, image: int) -> float:
        weights, norms, length = vector
        penalty_scale = 2 * self.sigma ** 2
        total = 0.0
        for ref_weights, ref_norms, ref_length in self.refs[image]:
            sims = [0.0] * self.n
            for gram, w in weights.items():
                r = ref_weights.get(gram)
                if r is not None:
                    sims[len(gram) - 1] += min(w, r) * r
            penalty = math.exp(-((length - ref_length) ** 2) / penalty_scale)
            for order in range(self.n):
                if norms[order] != 0 and ref_norms[order] != 0:
                    sims[order] /= norms[order] * ref_norms[order]
                total += sims[order] * penalty
        return total / self.n / len(self.refs[image]) * 10.0

    def corpus_score(self, hypotheses: list[list[str]]) -> float:
        return float(np.mean(self.scores(hypotheses)))
