"""The code location's executor: Dagster's default, whose step processes start from a fork server.

Dagster's default executor (``multi_or_in_process_executor``) runs each step of a run in a process
of its own, started with ``spawn``: a fresh interpreter that imports Dagster and this code location
and builds its definitions again, for every step. An ``orders`` run has three steps (the load,
then its ``freshness_check`` and ``schema_drift`` checks), so an empty run paid that import four
times (the run worker and three steps). :data:`default_executor` is the same executor, same name
and same run config, except that its multiprocess mode starts step processes with ``forkserver``
when a run's config names no ``start_method``: one server process per run imports the code
location once (:data:`PRELOAD`) and forks each step from it. Each step is still
its own process. ``execution: config: multiprocess: start_method: spawn: {}`` in a run's config
restores spawn; ``in_process`` is unchanged. Where ``forkserver`` does not exist (Windows), spawn,
as before. Figures: docs/performance.md, "Start-up".
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Mapping, Sequence

import dagster as dg

_DEFAULT = dg.multi_or_in_process_executor
PRELOAD = ("dagster", "pipelines.definitions")
"""What the fork server imports before it forks a step (Dagster adds its executor's module): the
code location, so that a step's process starts with it loaded and its definitions built. The run's
instance adds the modules of its storages (:func:`instance_modules`)."""


def instance_modules(instance: dg.DagsterInstance) -> list[str]:
    """The modules of the classes ``instance``'s configuration names (run, event and schedule
    storage, compute logs, run launcher, ...): importing them in the fork server spares each step
    the import of the storages it opens (SQLAlchemy, Alembic). Only imported, never opened: a
    connection is not shared across a fork. Empty when the instance has no ref (ephemeral)."""
    try:
        ref = instance.get_ref()
    except Exception:  # an ephemeral instance: no multiprocess run uses one
        return []
    modules = {getattr(getattr(ref, field, None), "module_name", None) for field in type(ref)._fields}
    return sorted(m for m in modules if isinstance(m, str))


def forkserver_by_default(config: Mapping[str, object], preload: Sequence[str] = PRELOAD) -> Mapping[str, object]:
    """``config`` (the executor's) with ``start_method: forkserver`` preloading ``preload`` in its
    multiprocess mode when it names no start method and the platform has a fork server; otherwise
    ``config`` unchanged."""
    multiprocess = config.get("multiprocess")
    if not isinstance(multiprocess, Mapping) or multiprocess.get("start_method"):
        return config
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return config
    server = {"forkserver": {"preload_modules": list(preload)}}
    return {**config, "multiprocess": {**multiprocess, "start_method": server}}


@dg.executor(
    name=_DEFAULT.name,
    config_schema=_DEFAULT.config_schema.as_field(),
    requirements=_DEFAULT.get_requirements,
)
def default_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's default executor, its step processes forked from a fork server unless the run's
    config picks another start method (see the module's docstring)."""
    preload = [*PRELOAD, *(m for m in instance_modules(init_context.instance) if m not in PRELOAD)]
    config = forkserver_by_default(init_context.executor_config, preload)
    creation = _DEFAULT.executor_creation_fn
    assert creation is not None
    return creation(init_context._replace(executor_config=config))
