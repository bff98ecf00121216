"""``python -m pytest_quantcheck.checks``: print the docs' marker table from the registry."""

from pytest_quantcheck.checks import marker_table

print(marker_table(), end="")
