"""The error a user's own input causes: a configuration key or value, a name, an option (captioning.config
re-exports it, where most callers take it from); and training that cannot go on (captioning.training.selection
raises it), here so that the command line catches it without importing the training code and TensorFlow."""


class ConfigError(ValueError):
    """A configuration value or key a user supplied is wrong."""


class TrainingError(RuntimeError):
    """Training that cannot go on (e.g. the loss became NaN)."""
