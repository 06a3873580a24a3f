"""The error a user's own input causes: a configuration key or value, a name, an option. (captioning.config
re-exports it, where most callers take it from.)"""


class ConfigError(ValueError):
    """A configuration value or key a user supplied is wrong."""
