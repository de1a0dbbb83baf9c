"""Running a Procrastinate project's tasks on jobq workers.

```python
import procrastinate, jobq.procrastinate
from service.queue.connector import AsyncpgConnector      # jobq's connector, on asyncpg

app = procrastinate.App(connector=AsyncpgConnector(dsn=DATABASE_URL))

@app.task(name="billing.invoice", queue="billing", retry=3, lock="billing")
async def invoice(customer_id: int) -> None: ...

jobq.procrastinate.declare(app)   # the line a Procrastinate project adds
```

`declare` makes each of the app's tasks a jobq job type of the same name, queue, priority,
locks and retries (a RetryStrategy becomes the same number of attempts and a fixed or
exponential backoff); the payload's schema comes from the function's parameters. Deferrals
keep working as they are written (`invoice.defer_async(customer_id=7)`, with
`configure(connection=conn)` inside your transaction): on jobq's connector they are jobq jobs,
shown by the REST API, and `jobq worker --app yourpackage.tasks` runs them.

Differences: a task that takes the context (`pass_context=True`) gets jobq's context (progress,
should_stop, attempt), not Procrastinate's JobContext; periodic tasks are not run.
"""

from __future__ import annotations

from typing import Any

from service.domain import jobtypes


def declare(procrastinate_app: Any, app: jobtypes.App | None = None) -> list[jobtypes.Task]:
    """Declare every task of `procrastinate_app` as a jobq job type (in `app`, by default a
    new jobq.App); returns them."""
    app = app or jobtypes.App()
    declared = []
    for name, task in sorted(procrastinate_app.tasks.items()):
        if task.pass_context and jobtypes.context_parameter(task.func) is None:
            raise jobtypes.DeclarationError(
                f"job type {name!r}: with pass_context=True, name the function's first "
                "parameter `context` (or `ctx`) so jobq can tell it from the payload")
        declared.append(app.task(
            task.func, name=name, queue=task.queue, priority=task.priority or 0,
            lock=task.lock, queueing_lock=task.queueing_lock,
            retry=task.retry_strategy if task.retry_strategy is not None else 0))
    return declared
