"""Prefect tasks: thin wrappers that call evisrag_core and record what they did in MLflow.

DVC decides what is stale, so no task caches results (`cache_policy=NO_CACHE`): a task that runs does the work. A task
with retries does not retry a user error (evisrag_core.errors.UserError): it would fail the same way every time.
"""

from typing import Any

from prefect.cache_policies import NO_CACHE

from evisrag_core.errors import UserError


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry an outage (a hub download, a full disk freed meanwhile), not a typo."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


TASK_DEFAULTS = {"cache_policy": NO_CACHE, "persist_result": False, "retry_condition_fn": retry_unless_user_error}
