"""Reliability suite: ``pytest -m reliability`` runs it alone (see docs/reliability.md)."""

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "reliability: fault schedules, kills, database faults, bad input, secrets (tests/reliability)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def conn(migrated_db):
    import psycopg

    from pipelines.warehouse.db import libpq_url

    with psycopg.connect(libpq_url(migrated_db), autocommit=True) as c:
        yield c
