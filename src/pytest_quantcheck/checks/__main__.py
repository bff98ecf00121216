"""``python -m pytest_quantcheck.checks``: print the README's marker table from the registry."""

from pytest_quantcheck.checks import marker_table

print(marker_table(), end="")
