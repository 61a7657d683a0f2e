"""Fixtures of the end-to-end tests; the deployment they start is
:class:`tests.support.prodstack.ProdStack`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.prodstack import ProdStack, dagster_pg_url


@pytest.fixture
def prod_stack(tmp_path: Path, make_database: Callable[[], str]) -> Iterator[Callable[..., ProdStack]]:
    """Factory: ``prod_stack(pool_limit=2, ...)`` starts a stack on two fresh databases (the Dagster
    instance's and the warehouse); every stack it started is stopped at teardown."""
    stacks: list[ProdStack] = []

    def start(**kwargs: Any) -> ProdStack:
        stack = ProdStack(
            workdir=tmp_path / f"stack{len(stacks)}",
            dagster_pg_url=dagster_pg_url(make_database()),
            warehouse_url=make_database(),
            **kwargs,
        )
        stacks.append(stack)
        return stack.start()

    try:
        yield start
    finally:
        for stack in stacks:
            stack.stop()
