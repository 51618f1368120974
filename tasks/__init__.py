"""Prefect tasks: thin wrappers that call evisrag_core and record what they did in MLflow.

DVC decides what is stale, so no task caches results (`cache_policy=NO_CACHE`): a task that runs does the work.
"""

from prefect.cache_policies import NO_CACHE

TASK_DEFAULTS = {"cache_policy": NO_CACHE, "persist_result": False}
