"""One configuration object for a captioning run: plain values, loaded from YAML, overridden by `key=value`.

The dataclass defaults are the only source of defaults. An experiment file holds overrides under `config:`
(other top-level sections, such as `search:`, belong to the tuning engines and are ignored here).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import yaml

from captioning.core.errors import ConfigError
from captioning.features import encoder_names, encoder_spec
from captioning.metrics import epoch_metrics
from captioning.models import decoder_names, decoder_spec


@dataclasses.dataclass
class Config:
    # Encoder: which CNN turns an image into a feature vector, at what input size, pooled to what grid.
    encoder: str = "xception"
    image_size: int = 299
    feature_grid: int = 1  # 1: global average pooling (the seed); g: a g x g grid of averages, concatenated
    colour_grid: int = 0  # g > 0: a g x g grid of the image's colours appended to the encoder's features
    feature_flip: bool = False  # also encode the horizontally mirrored image (cached too); see flip_mode
    flip_mode: str = "average"  # average: train and caption on the mean of both; augment: train on either, by chance
    # What runs the encoder's network: tensorflow (Keras), or openvino (the same network converted once; xception
    # only), in inference_precision f32, bf16 (openvino only, where the CPU has native bfloat16; else f32), or int8
    # (openvino only: quantized once by NNCF, calibrated on the training images of the first dataset extracted so).
    encoder_runtime: str = "tensorflow"
    inference_precision: str = "f32"
    # Text.
    vocab_min_count: int = 5
    max_length: int = 40  # longest caption in words, start and end tokens included; longer ones are cut
    # Decoder: a registered family (captioning.models): merge (the seed's: the pooled vector added after the LSTM),
    # attention (Show-Attend-Tell soft attention over the encoder's spatial map; captioning/models/attention.py) or
    # transformer (pre-layer-norm blocks cross-attending to the map; captioning/models/transformer.py).
    decoder: str = "merge"
    embedding_size: int = 256  # the word embedding; the transformer's width (split over transformer_heads)
    units: int = 512
    lstm_layers: int = 1  # merge only (the attention decoder has one LSTM)
    dropout: float = 0.5
    attention_units: int = 256  # attention only: the size of the attention MLP
    attention_penalty: float = 1.0  # attention only: weight of the doubly stochastic attention regulariser
    transformer_layers: int = 2  # transformer only: decoder blocks
    transformer_heads: int = 4  # transformer only: attention heads (embedding_size must divide by it)
    transformer_ff: int = 1024  # transformer only: units of each block's feed-forward layer
    # Training.
    learning_rate: float = 1e-3
    batch_size: int = 64
    epochs: int = 20
    patience: int = 3  # epochs without improvement of the selection metric before stopping
    lr_decay: float = 0.5  # after an epoch that does not improve the selection metric, learning_rate *= lr_decay
    warmup_steps: int = 0  # n > 0: the rate rises linearly to learning_rate over the first n updates (then lr_decay)
    label_smoothing: float = 0.0  # e > 0: each target's loss takes e of its weight from the whole vocabulary
    selection_metric: str = "bleu4"  # dev-split metric used for early stopping and model selection
    selection_beam: int = 1  # how dev is decoded after each epoch: 1 greedy (fast), k beam search of width k
    seed: int = 0
    # Self-critical sequence training (Rennie et al. 2017) after teacher forcing: reward CIDEr-D on train captions.
    scst_epochs: int = 0  # 0: off
    scst_samples: int = 5  # captions sampled per image and step
    scst_learning_rate: float = 2e-4  # for steps of batch_size images x scst_samples captions
    scst_baseline: str = "mean"  # mean: the mean reward of the image's other samples; greedy: the greedy caption's
    scst_bleu_weight: float = 0.0  # reward = CIDEr-D + this x the caption's sentence BLEU-4 (0: CIDEr-D alone)
    # Decoding.
    beam_width: int = 3
    length_penalty: float = 0.5  # beam score = log-probability / length ** length_penalty (0.5: chosen on Flickr8k dev)
    no_repeat_ngram: int = 0  # n >= 2: no caption repeats an n-gram of words (greedy and beam search); 0: off
    # k > 0: the beam's captions re-ranked by their consensus with the captions of the k training images nearest in
    # feature space (captioning.decoding.consensus; beam search only, with the neighbour index the bundle carries);
    # 0: off
    rerank_neighbours: int = 0
    rerank_weight: float = 0.5  # the consensus's share of the re-ranking score; the beam's score has the rest

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """What keys a study's default name and a training's checkpoint: every value, except keys added since
        those were first keyed that are at their default, so that a study or training begun before still resumes."""
        return {k: v for k, v in self.to_dict().items() if k not in LATER_KEYS or v != LATER_KEYS[k]}

    def replace(self, **changes: Any) -> "Config":
        return from_dict({**self.to_dict(), **changes})

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Config":
        return from_dict(json.loads(Path(path).read_text()))


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
LATER_KEYS = {"selection_beam": 1, "no_repeat_ngram": 0, "scst_bleu_weight": 0.0,  # added on 2026-11-30: defaults
              "rerank_neighbours": 0, "rerank_weight": 0.5,
              "transformer_layers": 2, "transformer_heads": 4, "transformer_ff": 1024,  # added on 2026-12-07
              "warmup_steps": 0, "label_smoothing": 0.0,
              "encoder_runtime": "tensorflow", "inference_precision": "f32"}
FLIP_MODES = ("average", "augment")
RUNTIMES = ("tensorflow", "openvino")  # encoder_runtime
PRECISIONS = ("f32", "bf16", "int8")  # inference_precision
SCST_BASELINES = ("mean", "greedy")


def _coerce(key: str, value: Any) -> Any:
    """Convert a value (from YAML or a `--set` string) to the field's type, or fail naming the key."""
    kind = type(FIELDS[key].default)
    if isinstance(value, str) and kind is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config key {key!r}: cannot read {value!r} ({exc})") from None
    if kind is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"config key {key!r} needs a {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"config key {key!r} needs a finite number, got {value!r}")
    return value


def _check(config: Config) -> Config:
    positive = ("image_size", "feature_grid", "vocab_min_count", "embedding_size", "units", "lstm_layers",
                "batch_size", "epochs", "beam_width", "attention_units", "selection_beam", "transformer_layers",
                "transformer_heads", "transformer_ff")
    for key in positive:
        if getattr(config, key) < 1:
            raise ConfigError(f"config key {key!r} must be at least 1, got {getattr(config, key)}")
    if config.max_length < 3:
        raise ConfigError(f"config key 'max_length' must be at least 3 (start, one word, end), got {config.max_length}")
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"config key 'dropout' must be in [0, 1), got {config.dropout}")
    if config.learning_rate <= 0:
        raise ConfigError(f"config key 'learning_rate' must be positive, got {config.learning_rate}")
    if not 0.0 < config.lr_decay <= 1.0:
        raise ConfigError(f"config key 'lr_decay' must be in (0, 1] (1: constant learning rate), got {config.lr_decay}")
    if config.decoder not in decoder_names():
        raise ConfigError(f"config key 'decoder' must be one of {', '.join(decoder_names())}, got {config.decoder!r}")
    for key, value in decoder_spec(config.decoder).required.items():
        if getattr(config, key) != value:
            raise ConfigError(f"config key {key!r} is {getattr(config, key)}, but the {config.decoder} decoder needs "
                              f"{key}={value}; set {key}={value} (or another decoder)")
    if config.attention_penalty < 0:
        raise ConfigError(f"config key 'attention_penalty' must be 0 (off) or more, got {config.attention_penalty}")
    if config.embedding_size % config.transformer_heads:
        raise ConfigError(f"config key 'embedding_size' ({config.embedding_size}) must divide into transformer_heads "
                          f"({config.transformer_heads}) equal heads; choose e.g. transformer_heads="
                          f"{_divisor(config.embedding_size, config.transformer_heads)}")
    if config.warmup_steps < 0:
        raise ConfigError(f"config key 'warmup_steps' must be 0 (off) or more, got {config.warmup_steps}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ConfigError(f"config key 'label_smoothing' must be in [0, 1) (0: off), got {config.label_smoothing}")
    if config.colour_grid < 0:
        raise ConfigError(f"config key 'colour_grid' must be 0 (off) or more, got {config.colour_grid}")
    if config.flip_mode not in FLIP_MODES:
        raise ConfigError(f"config key 'flip_mode' must be one of {', '.join(FLIP_MODES)}, got {config.flip_mode!r}")
    if config.scst_epochs < 0:
        raise ConfigError(f"config key 'scst_epochs' must be 0 (off) or more, got {config.scst_epochs}")
    if config.scst_samples < 2 and not (config.scst_samples == 1 and config.scst_baseline == "greedy"):
        raise ConfigError(f"config key 'scst_samples' must be at least 2 (the baseline is the mean reward of an "
                          f"image's other samples; 1 only with scst_baseline=greedy), got {config.scst_samples}")
    if config.scst_learning_rate <= 0:
        raise ConfigError(f"config key 'scst_learning_rate' must be positive, got {config.scst_learning_rate}")
    if config.scst_bleu_weight < 0:
        raise ConfigError(f"config key 'scst_bleu_weight' must be 0 (CIDEr-D alone) or more, got "
                          f"{config.scst_bleu_weight}")
    if config.scst_baseline not in SCST_BASELINES:
        raise ConfigError(f"config key 'scst_baseline' must be one of {', '.join(SCST_BASELINES)}, "
                          f"got {config.scst_baseline!r}")
    if config.no_repeat_ngram < 0 or config.no_repeat_ngram == 1:
        raise ConfigError(f"config key 'no_repeat_ngram' must be 0 (off) or at least 2 (no repeated word pairs), "
                          f"got {config.no_repeat_ngram}")
    if config.rerank_neighbours < 0:
        raise ConfigError(f"config key 'rerank_neighbours' must be 0 (off) or more, got {config.rerank_neighbours}")
    if not 0.0 <= config.rerank_weight <= 1.0:
        raise ConfigError(f"config key 'rerank_weight' must be in [0, 1] (the consensus's share of the score), got "
                          f"{config.rerank_weight}")
    if config.patience < 0:
        raise ConfigError(f"config key 'patience' must be 0 or more, got {config.patience}")
    selectable = (*epoch_metrics(), "loss")
    if config.selection_metric not in selectable:
        raise ConfigError(f"config key 'selection_metric' must be one of {', '.join(selectable)}, "
                          f"got {config.selection_metric!r}")
    if config.encoder not in encoder_names():
        raise ConfigError(f"unknown encoder {config.encoder!r}; choose one of {', '.join(encoder_names())}")
    if config.encoder_runtime not in RUNTIMES:
        raise ConfigError(f"config key 'encoder_runtime' must be one of {', '.join(RUNTIMES)}, "
                          f"got {config.encoder_runtime!r}")
    runtimes = encoder_spec(config.encoder).runtimes
    if config.encoder_runtime not in runtimes:
        raise ConfigError(f"the {config.encoder} encoder runs on {' or '.join(runtimes)} only, not "
                          f"{config.encoder_runtime}; set encoder_runtime={runtimes[0]}")
    if config.inference_precision not in PRECISIONS:
        raise ConfigError(f"config key 'inference_precision' must be one of {', '.join(PRECISIONS)}, "
                          f"got {config.inference_precision!r}")
    if config.inference_precision != "f32" and config.encoder_runtime != "openvino":
        raise ConfigError(f"inference_precision {config.inference_precision} needs encoder_runtime=openvino "
                          "(TensorFlow runs the encoder in f32); set inference_precision=f32 or "
                          "encoder_runtime=openvino")
    return config


def _divisor(size: int, heads: int) -> int:
    """The divisor of size nearest to heads (the fix a head-count error suggests)."""
    return min((h for h in range(1, size + 1) if size % h == 0), key=lambda h: (abs(h - heads), h))


def from_dict(values: dict[str, Any]) -> Config:
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(FIELDS)}")
    return _check(Config(**{key: _coerce(key, value) for key, value in values.items()}))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ["units=256", "dropout=0.3"] into {"units": 256, "dropout": 0.3}, rejecting unknown keys."""
    values = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {pair!r} is not of the form key=value (e.g. --set units=256)")
        if key not in FIELDS:
            raise ConfigError(f"unknown config key {key!r} in --set; known keys: {', '.join(FIELDS)}")
        values[key] = _coerce(key, raw.strip())
    return values


def read_experiment(path: Path) -> dict[str, Any]:
    """The whole experiment file as a dict (config overrides plus sections for other tools)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {path} does not exist; see experiments/ for the available ones")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"experiment file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("config", {}), dict):
        raise ConfigError(f"experiment file {path} must be a mapping with a 'config:' section of key: value pairs")
    return data


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the experiment file's `config:` section, then `--set` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        section = read_experiment(path).get("config") or {}
        unknown = sorted(set(section) - set(FIELDS))
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)} in {path}; known keys: {', '.join(FIELDS)}")
        values.update(section)
    values.update(parse_overrides(overrides or []))
    return from_dict(values)


# What a fine-tuning may change: how the self-critical stage trains, selects and decodes; not the model, its inputs
# or the data's split (seed: a seeded split would move dev and test images into training).
FINETUNE_KEYS = ("scst_epochs", "scst_samples", "scst_learning_rate", "scst_baseline", "scst_bleu_weight",
                 "patience", "lr_decay", "selection_metric", "selection_beam", "batch_size", "beam_width",
                 "length_penalty", "no_repeat_ngram", "rerank_neighbours", "rerank_weight")


def check_finetune(trained: Config, config: Config) -> None:
    """A fine-tuning's config is the trained captioner's with other FINETUNE_KEYS only, and some SCST epochs."""
    fixed = sorted(k for k in FIELDS if k not in FINETUNE_KEYS and getattr(config, k) != getattr(trained, k))
    if fixed:
        raise ConfigError(f"config key(s) {', '.join(fixed)} shape the model, its inputs or the data's split and cannot "
                          f"change in a fine-tuning (it may change {', '.join(FINETUNE_KEYS)}); train a new "
                          "captioner with: python -m captioning train --set KEY=VALUE")
    if not config.scst_epochs:
        raise ConfigError("a fine-tuning runs self-critical epochs: give their number, e.g. --set scst_epochs=4"
                          + ("" if trained.scst_epochs else " (this captioner was trained without them)"))


def finetune_config(trained: Config, changes: dict[str, Any]) -> Config:
    """The fine-tuning's config: the trained captioner's, with `changes` (parsed overrides) of FINETUNE_KEYS only."""
    config = trained.replace(**changes)
    check_finetune(trained, config)
    return config
