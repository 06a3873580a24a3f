import pytest

from captioning.config import Config, ConfigError, load_config, parse_overrides


def test_defaults_are_the_seed_setup():
    config = load_config()
    assert (config.encoder, config.image_size, config.feature_grid) == ("xception", 299, 1)


def test_experiment_file_then_overrides(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("config:\n  units: 128\n  dropout: 0.2\nsearch:\n  trials: 3\n")
    config = load_config(path, ["units=64", "learning_rate=3e-4"])
    assert config.units == 64 and config.dropout == 0.2 and config.learning_rate == pytest.approx(3e-4)


def test_unknown_override_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="unknown config key 'unitz'"):
        parse_overrides(["unitz=3"])


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("config:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="lerning_rate"):
        load_config(path)


@pytest.mark.parametrize("pair, message", [
    ("units=many", "needs a int"), ("dropout=1.5", "dropout"), ("units", "key=value"),
    ("encoder=resnet", "unknown encoder"), ("selection_metric=cidr", "selection_metric"),
    ("selection_beam=0", "selection_beam.*at least 1"), ("no_repeat_ngram=1", "no_repeat_ngram.*at least 2"),
    ("scst_bleu_weight=nan", "'scst_bleu_weight' needs a finite number, got nan"),
    ("learning_rate=.inf", "'learning_rate' needs a finite number, got inf"),
])
def test_bad_values_are_clear_errors(pair, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [pair])


def test_int_accepted_for_float_and_round_trip(tmp_path):
    config = load_config(None, ["learning_rate=1"])
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    config.save(tmp_path / "c.json")
    assert Config.load(tmp_path / "c.json") == config


def test_missing_experiment_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_keys_added_later_leave_identities_unchanged_at_their_default():
    """A study's default name and a training's checkpoint are keyed by Config.identity(): a study begun before
    selection_beam, no_repeat_ngram, scst_bleu_weight, the re-ranking keys, the transformer's keys, warm-up, label
    smoothing and the encoder's runtime existed still resumes; set to other values, they start another."""
    config = Config()
    later = ("selection_beam", "no_repeat_ngram", "scst_bleu_weight", "rerank_neighbours", "rerank_weight",
             "transformer_layers", "transformer_heads", "transformer_ff", "warmup_steps", "label_smoothing",
             "encoder_runtime", "inference_precision")
    before = {k: v for k, v in config.to_dict().items() if k not in later}
    assert config.identity() == before
    assert config.replace(selection_beam=3).identity() == {**before, "selection_beam": 3}
    assert config.replace(no_repeat_ngram=2).identity() != before
    assert config.replace(scst_bleu_weight=0.5).identity() == {**before, "scst_bleu_weight": 0.5}
    assert config.replace(rerank_neighbours=10).identity() == {**before, "rerank_neighbours": 10}
    assert config.replace(transformer_layers=3).identity() == {**before, "transformer_layers": 3}
    assert config.replace(label_smoothing=0.1).identity() == {**before, "label_smoothing": 0.1}
    assert config.replace(encoder_runtime="openvino").identity() == {**before, "encoder_runtime": "openvino"}
