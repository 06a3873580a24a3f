"""The COCO caption metrics as the field reports them, computed by `pycocoevalcap`: BLEU-1..4 on PTB tokens
(`coco_bleu1..4`), METEOR, ROUGE-L and CIDEr-D (`cider`), and SPICE when it can run. The PTB tokenizer and METEOR
run on Java: without `java` they are skipped (one line says so) and the others use our cleaned tokens.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from functools import lru_cache
from pathlib import Path

from captioning.data.text import clean_caption
from captioning.metrics.bleu import check_lengths


def coco_scorer(references: list[list[list[str]]], raw_references: list[list[str]]):
    """The metric registry's scorer: hypotheses (word lists) -> the COCO scores against the raw references."""
    return lambda hypotheses: coco_scores(raw_references, [" ".join(h) for h in hypotheses])


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


def spice_missing() -> str | None:
    """Why SPICE cannot run here, or None."""
    if not java_available():
        return "SPICE skipped: it runs on Java, which is not on PATH or is turned off (CAPTIONING_JAVA_METRICS=off)"
    lib = _package_dir() / "spice" / "lib"
    if not (lib / "stanford-corenlp-3.6.0.jar").is_file() or not (lib / "stanford-corenlp-3.6.0-models.jar").is_file():
        return ("SPICE skipped: it needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads at first use (no "
                f"download here); put stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar into {lib}")
    return _SPICE_FAILED[0] if _SPICE_FAILED else None


_SPICE_FAILED: list[str] = []


def meteor_missing() -> str | None:
    """Why METEOR cannot run here, or None."""
    if java_available():
        return None
    if _java_on_path():
        return "METEOR runs on Java, which CAPTIONING_JAVA_METRICS=off turns off"
    return "METEOR runs on Java and no `java` is on PATH (install a Java runtime, e.g. default-jre-headless)"


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

    check_lengths(references, hypotheses)
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
    why = spice_missing()
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
