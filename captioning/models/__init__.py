"""Decoders: the registry of decoder families, each a file in this folder.

A family registers a `DecoderSpec`: its name (the config's `decoder`), the Keras model name it builds (how a saved
model finds its family again), whether it reads the encoder's spatial maps, its own config keys, and two callables:
`build(config, vocab_size, inputs)` (the Keras model for teacher forcing; `inputs` is what it reads: the feature
vectors, or ImageInputs with the maps) and `step_decoder(model, vocab)` (the `StepDecoder` of
captioning.models.base over that model's layers). Greedy and beam search, SCST, ensembles, the Captioner and the
attention maps reach a decoder only through these.

The built-in families are registered below, importing their TensorFlow code only when first used, so that reading
and checking a config stays light. Adding a decoder takes three files: the decoder (a module in this folder), its
registration (a `register_decoder` call here) and its config fields (captioning/config.py). A decoder of your own,
outside the package, registers itself from its module, e.g. (tests/toy_decoder.py is a complete one):

    from captioning.models import DecoderSpec, register_decoder

    register_decoder(DecoderSpec(name="toy", model_name="toy_decoder", build=build_model,
                                 step_decoder=ToyStepDecoder, keys=("units",)))

after which `--set decoder=toy` trains, decodes, ensembles and searches with it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from captioning.core.plugins import Registry, import_code, lazy


class DecoderLookupError(ValueError):
    """A decoder name, or a saved model, of no registered family."""


REGISTRY = Registry("decoder", DecoderLookupError)
decoder_names, decoder_spec = REGISTRY.names, REGISTRY.spec


@dataclasses.dataclass(frozen=True)
class DecoderSpec:
    name: str  # the config's `decoder` value
    model_name: str  # the Keras model's name, which a saved decoder keeps
    build: Callable[..., Any]  # (config, vocab_size, inputs) -> keras.Model for teacher forcing
    step_decoder: Callable[..., Any]  # (model, vocab) -> StepDecoder
    reads_maps: bool = False  # reads the encoder's spatial maps (ImageInputs), not only the feature vectors
    keys: tuple[str, ...] = ()  # config keys only this family reads (documentation, the search's conditional keys)
    required: dict[str, Any] = dataclasses.field(default_factory=dict)  # config keys it needs at these values
    description: str = ""


def register_decoder(spec: DecoderSpec) -> DecoderSpec:
    """Add a decoder family; a name or model name already taken by another family is refused."""
    for other in REGISTRY.values():
        if other.name != spec.name and other.model_name == spec.model_name:
            raise ValueError(f"decoder {spec.name!r}: the model name {spec.model_name!r} is {other.name!r}'s")
    return REGISTRY.register(spec)


def spec_of_model(model) -> DecoderSpec:
    """The family of a built or loaded Keras model, by its name."""
    for spec in REGISTRY.values():
        if spec.model_name == model.name:
            return spec
    raise DecoderLookupError(f"the decoder model {model.name!r} is of no registered decoder family (registered: "
                             f"{', '.join(s.model_name for s in REGISTRY.values())}); import the module that "
                             "registers it first")


def build_model(config, vocab_size: int, inputs):
    """The Keras model of config.decoder's family, for teacher forcing on `inputs`."""
    return decoder_spec(config.decoder).build(config, vocab_size, inputs)


def make_step_decoder(model, vocab):
    """The step decoder over a trained model of any registered family."""
    return spec_of_model(model).step_decoder(model, vocab)


def import_families() -> None:
    """Import every registered family's code, so that a saved model's own layers (registered with Keras when their
    module is imported) can be loaded."""
    for spec in REGISTRY.values():
        import_code(spec.build)


register_decoder(DecoderSpec(
    name="merge", model_name="merge_decoder", keys=("lstm_layers",),
    build=lazy("captioning.models.merge", "build_model"),
    step_decoder=lazy("captioning.models.merge", "MergeStepDecoder"),
    description="the pooled image vector added to an LSTM's output (the seed's decoder)"))
register_decoder(DecoderSpec(
    name="attention", model_name="attention_decoder", reads_maps=True,
    keys=("attention_units", "attention_penalty"), required={"lstm_layers": 1},
    build=lazy("captioning.models.attention", "build_model"),
    step_decoder=lazy("captioning.models.attention", "AttentionStepDecoder"),
    description="Show-Attend-Tell soft attention over the encoder's spatial map, one LSTM"))
register_decoder(DecoderSpec(
    name="transformer", model_name="transformer_decoder", reads_maps=True,
    keys=("transformer_layers", "transformer_heads", "transformer_ff"),
    build=lazy("captioning.models.transformer", "build_model"),
    step_decoder=lazy("captioning.models.transformer", "TransformerStepDecoder"),
    description="pre-layer-norm transformer blocks cross-attending to the encoder's spatial map"))
