"""Errors that are the user's to fix: the CLI prints their message, without a traceback."""


class UserError(Exception):
  """A bad flag, binding, path or shape, explained in one line."""


class ConfigError(UserError, ValueError):
  """An invalid configuration value (also a ValueError, for callers that catch those)."""
