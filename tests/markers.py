"""Marks shared by test files (imported as `markers`: pytest puts tests/ on the path)."""
import os

import pytest

from captioning.serving import infra


def _postgres_installed() -> bool:
    try:
        infra.postgres_bin()
        return True
    except infra.InfraError:
        return False


# CI installs PostgreSQL (.ci/run) and sets CAPTIONING_REQUIRE_POSTGRES=1, so there a missing server fails.
requires_postgres = pytest.mark.skipif(not _postgres_installed() and not os.environ.get("CAPTIONING_REQUIRE_POSTGRES"),
                                       reason="PostgreSQL server not installed (apt-get install postgresql)")
