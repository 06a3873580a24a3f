"""Data -> features -> trained decoder -> scored captions: the one train-and-evaluate function every caller shares
(the CLI, the search's trials, the benchmarks)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from captioning.config import Config, check_finetune
from captioning.data.dataset import DataError
from captioning.data.text import Vocabulary
from captioning.decoding.captioner import Captioner
from captioning.evaluation.choices import build_neighbours
from captioning.evaluation.evaluate import Evaluation, evaluate
from captioning.features.prepare import Prepared
from captioning.metrics.coco import start_java_scorers
from captioning.training.teacher import EpochCallback, TrainResult, train_decoder


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
