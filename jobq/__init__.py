"""jobq's public import surface: declare your job types, write their code, submit jobs.

```python
import jobq

app = jobq.App(queue="mail")

@app.task(name="mail.send", retry=4, timeout=30)          # a sync function: runs in a thread
def send(ctx: jobq.SyncContext, to: str, subject: str, body: str = "") -> dict:
    ctx.progress(50, stage="sending")
    ...

async with engine.begin() as conn:                          # your transaction
    await jobq.enqueue(conn, send, {"to": "a@example.com", "subject": "Hi"})
```

Run them with `jobq worker --app yourpackage.jobs` (and `jobq serve --app ...` so the API
validates and lists them). docs/job-types.md describes all of it.
"""

from __future__ import annotations

from jobq.enqueueing import enqueue
from service.domain.context import Context, SyncContext
from service.domain.jobtypes import App, DeclarationError, JobType, Task, load
from service.domain.retry import Backoff, delays, exponential, fixed
from service.domain.retry import RetryPolicy as Retry
from service.errors import (
    InvalidRequest,
    JobFailure,
    JobTimeout,
    PermanentJobError,
    TransientJobError,
    UnknownJobType,
)

__all__ = [
    "App",
    "Backoff",
    "Context",
    "DeclarationError",
    "InvalidRequest",
    "JobFailure",
    "JobTimeout",
    "JobType",
    "PermanentJobError",
    "Retry",
    "SyncContext",
    "Task",
    "TransientJobError",
    "UnknownJobType",
    "delays",
    "enqueue",
    "exponential",
    "fixed",
    "load",
]
