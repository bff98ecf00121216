"""Checks: one registered class per marker (:mod:`.registry`), decided into an :class:`Outcome`
(:mod:`.outcome`). Importing this package registers every built-in check, in the order the docs
lists them."""

# The import order is the registration order, which the docs' marker table follows.
from pytest_quantcheck.checks import quality, speed  # isort: split

from pytest_quantcheck.checks import accuracy  # isort: split

from pytest_quantcheck.checks import files  # isort: split

from pytest_quantcheck.checks.comparison import Comparisons, OwnMeasurements
from pytest_quantcheck.checks.outcome import (
    ERROR,
    FATES,
    RECORDED,
    SKIPPED,
    Against,
    CheckArgumentError,
    CheckSkipped,
    Outcome,
    SpeedAgainst,
    Subject,
    TaskAgainst,
    apply_holm,
)
from pytest_quantcheck.checks.registry import (
    REGISTRY,
    Check,
    CheckType,
    Param,
    marker_lines,
    marker_table,
    misspelt,
    parse,
)

__all__ = [
    "ERROR",
    "FATES",
    "RECORDED",
    "REGISTRY",
    "SKIPPED",
    "Against",
    "Check",
    "CheckArgumentError",
    "CheckSkipped",
    "CheckType",
    "Comparisons",
    "Outcome",
    "OwnMeasurements",
    "Param",
    "SpeedAgainst",
    "Subject",
    "TaskAgainst",
    "accuracy",
    "apply_holm",
    "files",
    "marker_lines",
    "marker_table",
    "misspelt",
    "parse",
    "quality",
    "speed",
]
