"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class ConfigError(ValueError):
    """A bad configuration value, a missing data directory or an unreadable checkpoint."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def positive(name: str, value, allow_zero: bool = False) -> None:
    """Check that a number is positive (or non-negative when ``allow_zero``)."""
    ok = value is not None and (value >= 0 if allow_zero else value > 0)
    check(ok, f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    check(value != float("inf"), f"{name} must be a finite number, got {value}")


def one_of(key: str, value, choices) -> None:
    """Check that the setting ``key`` is one of ``choices``."""
    check(value in choices, f"{key}={value!r} is not one of {list(choices)}")


class TrainingDiverged(RuntimeError):
    """The run blew up (non-finite loss, exploding energy or test NLL: :mod:`pdebm.diverge`);
    reported in one line like a ConfigError, with exit status 1."""


class WriteFailed(RuntimeError):
    """A run file could not be written (a full disk, a directory made read-only); one line that
    names the path and the last intact checkpoint, exit status 1."""
