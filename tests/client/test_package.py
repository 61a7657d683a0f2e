"""The package's public names load on first use (taptouch_resource/__init__.py): each resolves to
its module's object, and what a process imports depends on the names it uses."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import taptouch_resource
from taptouch_resource import (
    TaptouchAPIError,
    TaptouchAuthError,
    TaptouchConfigError,
    TaptouchProtocolError,
    TaptouchRateLimitError,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_public_name_resolves_to_the_object_of_its_module():
    assert sorted(taptouch_resource.__all__) == sorted(taptouch_resource._WHERE)
    for name, module in taptouch_resource._WHERE.items():
        got = getattr(taptouch_resource, name)
        assert got is getattr(importlib.import_module(f"taptouch_resource.{module}"), name), name
    assert set(taptouch_resource.__all__) <= set(dir(taptouch_resource))
    with pytest.raises(AttributeError, match="no attribute 'TaptouchClients'"):
        taptouch_resource.TaptouchClients  # noqa: B018 (a typo is an AttributeError, as before)


def test_each_module_is_an_attribute_of_the_package_after_a_bare_import():
    code = (
        "import taptouch_resource as t; assert t.client.TaptouchClient is t.TaptouchClient;"
        " assert t.retry.MAX_RETRY_AFTER > 0 and t.errors.TaptouchError is t.TaptouchError; print(sorted(t._MODULES))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    on_disk = sorted(p.stem for p in (ROOT / "taptouch_resource").glob("*.py") if p.stem != "__init__")
    assert out.strip() == str(on_disk)


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_a_decode_worker_imports_neither_httpx_nor_dagster_nor_psycopg():
    """A worker imports :mod:`pipelines.warehouse.decode` only: light, quick to start and small
    (each run process starts one per core)."""
    loaded = _imported_after("import pipelines.warehouse.decode")
    assert {"msgspec", "taptouch_resource", "pipelines"} <= loaded
    assert not loaded & {"httpx", "dagster", "psycopg", "rich"}


def test_the_client_imports_httpx_and_not_dagster():
    loaded = _imported_after("from taptouch_resource import TaptouchClient, TaptouchError")
    assert "httpx" in loaded
    assert not loaded & {"dagster", "psycopg"}
    assert "dagster" in _imported_after("from taptouch_resource import TaptouchResource")


def test_a_module_that_fails_to_load_says_why_instead_of_lacking_the_name():
    """An AttributeError raised while ``client`` loads (a dependency that lost a name) must not read
    as 'taptouch_resource has no TaptouchClient': the cause is in the error."""
    code = (
        "import httpx; del httpx.Auth\n"
        "try:\n"
        "    from taptouch_resource import TaptouchClient\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc, '|', exc.__cause__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "cannot import taptouch_resource.client" in out and "'Auth'" in out, out


def test_listing_the_package_imports_no_dagster():
    assert "dagster" not in _imported_after("import taptouch_resource, inspect; inspect.getmembers(taptouch_resource)")


@pytest.mark.parametrize(
    "error",
    [
        TaptouchAPIError(status=503, ack=503, code="UNAVAILABLE", message="try later", path="/v1/orders", hint="wait"),
        TaptouchRateLimitError(status=429, path="/v1/orders", http_status=200),
        TaptouchAuthError("bad secret", status=401, error="invalid_client", missing_scopes=("orders:read",)),
        TaptouchProtocolError("not the envelope"),
        TaptouchConfigError("plain http to a remote host"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_error_survives_pickling_with_its_message_and_attributes(error):
    """Errors cross process boundaries (a process pool, a decode worker's answer): each comes back
    as raised (its keyword-only constructor used to make ``TaptouchAPIError`` fail to unpickle)."""
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error) and back.args == error.args
    assert vars(back) == vars(error)
