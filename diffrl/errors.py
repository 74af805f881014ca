"""The error every layer raises for bad user input, defined beside the registry so that no layer imports upward.

:class:`ConfigError` is what a recipe turns into one line on stderr and exit status 2 (see
:func:`diffrl.train.config.run_recipe`); datasets, envs and configs all raise it (or a subclass).
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """Bad configuration input (unknown key, wrong type, missing file...): a one-line message saying what is right.

    Example:
        >>> issubclass(ConfigError, ValueError)
        True
    """
