"""Errors that dnnlab reports to users as one clear line.

Every error names its culprit (a layer path, a config key, a value). Pipelines catch
`DnnlabError`, print `str(err)` on one line and exit non-zero.
"""


class DnnlabError(Exception):
    """Base class: an error whose message is meant to be shown to a user as is."""


class ConfigError(DnnlabError, ValueError):
    """A config key has a bad value. The message names the key and the value."""


class ShapeError(DnnlabError, ValueError):
    """A shape a layer cannot take. The message names the layer path and the shapes."""
