"""Job types: what the queue knows about each kind of job, declared once, Procrastinate's way.

```python
app = jobq.App()

@app.task(name="mail.send", queue="mail", retry=4, timeout=30, runs_in="thread")
def send(ctx: jobq.SyncContext, to: str, subject: str, body: str = "") -> dict: ...
```

A declaration gives the type's name, queue, defaults (priority, attempts, backoff, timeout,
locks), where its code runs (`runs_in`: async on the worker's event loop, a thread, or a
killable child process) and its payload's schema: the function's parameters (their type hints)
or a msgspec Struct given as `payload=`. `implementation="pkg.module:function"` names code
living elsewhere, so the declaration imports nothing heavy: the API validates payloads against
declarations without importing the code that runs them; only workers import it.

Declaring a type registers it in this process's registry (`REGISTRY`), where the API, the
Procrastinate connector and the workers look types up by name; jobq's own types
(service/domain/builtin.py) are declared the same way and are always there. Two declarations
of one name are a DeclarationError. Plain Python: nothing here touches the database.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, ClassVar, Literal

import msgspec

from service import errors
from service.domain import context
from service.domain.retry import Backoff, RetryPolicy, policy_of

RunsIn = Literal["async", "thread", "process"]
RUNS_IN: tuple[str, ...] = ("async", "thread", "process")
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,127}$")
DEFAULT_TIMEOUT = timedelta(minutes=5)


class DeclarationError(ValueError):
    """A job-type declaration jobq cannot use; the message says what to fix."""


@dataclass(frozen=True)
class JobType:
    """What the queue knows about one kind of job."""

    name: str
    payload: type[msgspec.Struct]
    description: str = ""
    queue: str = "default"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: timedelta = DEFAULT_TIMEOUT
    priority: int = 0
    lock: str | None = None
    queueing_lock: str | None = None
    runs_in: RunsIn = "async"
    implementation: str | None = None
    """"pkg.module:function" when the code lives apart from the declaration."""
    function: Callable[..., Any] | None = field(default=None, compare=False)
    """The code, when it was declared together with it (a decorated function)."""
    payload_as_fields: bool = True
    """The payload's fields are the function's keyword arguments (a schema derived from its
    parameters); else the function takes the payload as one Struct. Whether it takes the
    context first is read from the function the worker runs (`context_parameter`)."""
    upload_route: str | None = None
    """Set for types whose input is uploaded files: they are submitted through this route."""
    origin: str = ""
    """Where it was declared (module:name): declaring the same thing again replaces it."""
    internal: bool = False
    """Submitted by jobq itself, never by clients (a client could have jobq sign anything)."""

    def validate(self, payload: Any) -> msgspec.Struct:
        """The payload as this type's schema, or InvalidRequest naming the bad field."""
        try:
            return msgspec.convert(payload, self.payload)
        except msgspec.ValidationError as exc:
            raise _payload_error(self.name, exc) from exc

    def schema(self) -> dict[str, Any]:
        """The payload's JSON schema."""
        return msgspec.json.schema(self.payload)

    def describe(self) -> dict[str, Any]:
        """The type as `GET /api/v1/job-types` lists it."""
        return {
            "name": self.name,
            "description": self.description,
            "queue": self.queue,
            "priority": self.priority,
            "max_attempts": self.retry.max_attempts,
            "backoff": self.retry.backoff.to_json(),
            "timeout_seconds": self.timeout.total_seconds(),
            "retry_timeouts": self.retry.retry_timeouts,
            "permanent_errors": [t.__name__ for t in self.retry.permanent],
            "lock": self.lock,
            "queueing_lock": self.queueing_lock,
            "runs_in": self.runs_in,
            "upload_route": self.upload_route,
            "payload_schema": self.schema(),
        }


def _payload_error(type_name: str, exc: msgspec.ValidationError) -> errors.InvalidRequest:
    # msgspec says "Expected `int`, got `str` - at `$.fail_times`": split message and path.
    message, _, where = str(exc).partition(" - at `$")
    path = "payload" + where.rstrip("`")
    return errors.InvalidRequest(
        f"Invalid payload for {type_name}: {message} (at {path}).",
        [errors.FieldError(path, message)],
    )


# -- declaring ----------------------------------------------------------------------------------


class Task:
    """A declared job type and, when declared together, its function (still callable as is)."""

    deferrer: ClassVar[Callable[..., Any] | None] = None
    """Submits a job of a task in the caller's transaction; installed by `import jobq`."""

    def __init__(self, job_type: JobType) -> None:
        self.job_type = job_type
        self.func = job_type.function

    @property
    def name(self) -> str:
        return self.job_type.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.func is None:
            raise TypeError(f"{self.name} is declared here; its code is "
                            f"{self.job_type.implementation}")
        return self.func(*args, **kwargs)

    async def defer_async(self, connection: Any, /, **payload: Any) -> Any:
        """Submit a job of this type on `connection`, inside its transaction: it exists only if
        that transaction commits. Returns the job's id. Same as `jobq.enqueue`."""
        if Task.deferrer is None:
            raise RuntimeError("import jobq to defer jobs")
        return await Task.deferrer(connection, self, payload)

    def __repr__(self) -> str:
        return f"<jobq task {self.name}>"


class App:
    """A set of job types, declared Procrastinate's way with `@app.task(...)`."""

    def __init__(self, *, queue: str = "default", registry: Registry | None = None) -> None:
        self.queue = queue
        """The queue of the types that name none."""
        self.registry = REGISTRY if registry is None else registry
        self.tasks: dict[str, Task] = {}

    def task(self, function: Callable[..., Any] | None = None, /, *,
             name: str | None = None,
             queue: str | None = None,
             retry: Any = None,
             backoff: Backoff | None = None,
             priority: int = 0,
             lock: str | None = None,
             queueing_lock: str | None = None,
             timeout: float | timedelta = DEFAULT_TIMEOUT,
             payload: type[msgspec.Struct] | None = None,
             runs_in: RunsIn | None = None,
             permanent_errors: tuple[type[BaseException], ...] = (),
             retry_timeouts: bool = True,
             implementation: str | None = None,
             description: str | None = None,
             upload_route: str | None = None) -> Any:
        """Declare a job type from the decorated function.

        `name` defaults to "module.function" as in Procrastinate. The payload schema is the
        function's parameters (the context parameter aside: named `ctx` or `context`, or typed
        jobq.Context / jobq.SyncContext), unless `payload=` gives a msgspec Struct, which the
        function then takes as its one argument after the context. `retry`: attempts, as an int
        of retries (Procrastinate's meaning), a `jobq.Retry`, or a RetryStrategy. `runs_in`:
        "async" for an async function, "thread" (default for a sync one) or "process" (a
        child process the timeout kills, for CPU-bound work). With `implementation=
        "pkg.module:function"`, the decorated function is only a signature: the worker imports
        and runs the named code.
        """
        def decorate(func: Callable[..., Any]) -> Task:
            options = dict(name=name, queue=queue, retry=retry, backoff=backoff,
                           priority=priority, lock=lock, queueing_lock=queueing_lock,
                           timeout=timeout, payload=payload, runs_in=runs_in,
                           permanent_errors=permanent_errors, retry_timeouts=retry_timeouts,
                           implementation=implementation, description=description,
                           upload_route=upload_route)
            return self._add(_declare(func, self.queue, **options))

        return decorate if function is None else decorate(function)

    def declare(self, name: str, *, payload: type[msgspec.Struct], implementation: str,
                runs_in: RunsIn = "async", **options: Any) -> Task:
        """Declare a job type whose code is elsewhere, with an explicit payload Struct; the
        other options are those of `task`."""
        job_type = _declare(None, self.queue, name=name, payload=payload,
                            implementation=implementation, runs_in=runs_in, **options)
        return self._add(job_type)

    def _add(self, job_type: JobType) -> Task:
        self.registry.add(job_type)
        task = self.tasks[job_type.name] = Task(job_type)
        return task


def _declare(func: Callable[..., Any] | None, default_queue: str, *, name: str | None = None,
             queue: str | None = None, retry: Any = None, backoff: Backoff | None = None,
             priority: int = 0, lock: str | None = None, queueing_lock: str | None = None,
             timeout: float | timedelta = DEFAULT_TIMEOUT,
             payload: type[msgspec.Struct] | None = None, runs_in: RunsIn | None = None,
             permanent_errors: tuple[type[BaseException], ...] = (),
             retry_timeouts: bool = True, implementation: str | None = None,
             description: str | None = None, upload_route: str | None = None,
             internal: bool = False) -> JobType:
    if func is not None and name is None:
        name = f"{func.__module__}.{func.__name__}"
    assert name is not None
    where = f"job type {name!r}"
    if not NAME.match(name):
        raise DeclarationError(f"{where}: a name is 1-128 letters, digits, '_', '.', ':', '-'")
    if implementation is not None and not re.match(r"^[\w.]+:[\w.]+$", implementation):
        raise DeclarationError(f"{where}: implementation must read 'pkg.module:function', "
                               f"not {implementation!r}")
    is_async = func is not None and inspect.iscoroutinefunction(func)
    runs_in = runs_in or ("async" if is_async or func is None else "thread")
    if runs_in not in RUNS_IN:
        raise DeclarationError(f"{where}: runs_in must be one of {', '.join(RUNS_IN)}")
    if func is not None and implementation is None and is_async != (runs_in == "async"):
        raise DeclarationError(
            f"{where}: runs_in={runs_in!r} needs " + ("an async function" if runs_in == "async"
                                                      else "a plain (sync) function"))
    if payload is not None and not (isinstance(payload, type)
                                    and issubclass(payload, msgspec.Struct)):
        raise DeclarationError(f"{where}: payload must be a msgspec.Struct subclass")
    derived = payload is None
    if payload is None:
        if func is None:
            raise DeclarationError(f"{where}: give payload= (a msgspec.Struct)")
        payload = _payload_from_signature(name, func)
    try:
        policy = policy_of(retry, backoff, permanent_errors, retry_timeouts)
    except ValueError as exc:
        raise DeclarationError(f"{where}: {exc}") from None
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if not 0 < seconds <= 7 * 86400:
        raise DeclarationError(f"{where}: timeout must be more than 0 and at most a week")
    if not -1000 <= priority <= 1000:
        raise DeclarationError(f"{where}: priority must be between -1000 and 1000")
    origin = implementation or (f"{func.__module__}:{func.__qualname__}" if func else name)
    return JobType(
        name=name, payload=payload,
        description=description or _first_line(func) or "",
        queue=queue or default_queue, retry=policy, timeout=timedelta(seconds=seconds),
        priority=priority, lock=lock, queueing_lock=queueing_lock, runs_in=runs_in,
        implementation=implementation,
        function=func if implementation is None else None,
        payload_as_fields=derived, upload_route=upload_route, origin=origin, internal=internal)


def _first_line(func: Callable[..., Any] | None) -> str | None:
    doc = inspect.getdoc(func) if func is not None else None
    return doc.strip().splitlines()[0] if doc else None


def context_parameter(func: Callable[..., Any]) -> str | None:
    """The name of `func`'s context parameter, if it has one (its first parameter)."""
    params = list(inspect.signature(func).parameters.values())
    if not params:
        return None
    first = params[0]
    if first.name in context.CONTEXT_NAMES:
        return first.name
    annotation = first.annotation
    if isinstance(annotation, str):
        return first.name if annotation.rsplit(".", 1)[-1] in ("Context", "SyncContext") \
            else None
    return first.name if annotation in context.CONTEXT_TYPES else None


def _payload_from_signature(name: str, func: Callable[..., Any]) -> type[msgspec.Struct]:
    """A Struct of `func`'s parameters (the context aside), from their type hints."""
    where = f"job type {name!r}"
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise DeclarationError(
            f"{where}: the type hints of {func.__qualname__} cannot be read ({exc}); import "
            "the types they name at module level, or give payload=") from None
    ctx = context_parameter(func)
    fields: list[tuple[Any, ...]] = []
    for param in inspect.signature(func).parameters.values():
        if param.name == ctx:
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise DeclarationError(
                f"{where}: parameter {param.name!r}: the payload's fields are keyword "
                "arguments; *args, **kwargs and positional-only parameters cannot be filled")
        hint = hints.get(param.name, Any)
        if param.default is param.empty:
            fields.append((param.name, hint))
        else:
            fields.append((param.name, hint, param.default))
    struct_name = "".join(p.title() for p in re.split(r"[^A-Za-z0-9]+", name) if p) + "Payload"
    try:
        payload = msgspec.defstruct(struct_name, fields, forbid_unknown_fields=True,
                                    module=func.__module__)
        msgspec.json.schema(payload)  # every type must have a JSON form
    except (TypeError, ValueError) as exc:
        raise DeclarationError(f"{where}: the parameters cannot be a payload: {exc}") from None
    return payload


# -- the registry --------------------------------------------------------------------------------


class Registry:
    """Job types by name."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def add(self, job_type: JobType) -> None:
        """Register `job_type`; DeclarationError if another declaration took its name."""
        if self is REGISTRY:
            _load_builtin()
        existing = self._types.get(job_type.name)
        if existing is not None and existing.origin != job_type.origin:
            raise DeclarationError(
                f"job type {job_type.name!r} is declared twice: in {existing.origin} and in "
                f"{job_type.origin}; rename one of them")
        self._types[job_type.name] = job_type

    def get(self, name: str) -> JobType:
        """The declaration of job type `name`, or UnknownJobType listing the known ones."""
        if self is REGISTRY:
            _load_builtin()
        try:
            return self._types[name]
        except KeyError:
            raise errors.UnknownJobType(name, list(self._types)) from None

    def __iter__(self) -> Iterator[JobType]:
        if self is REGISTRY:
            _load_builtin()
        return iter(sorted(self._types.values(), key=lambda t: t.name))

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def names(self) -> list[str]:
        return [t.name for t in self]


REGISTRY = Registry()
"""This process's job types: jobq's own and those of every module that declared some."""
_builtin_loading = False


def _load_builtin() -> None:
    global _builtin_loading
    if not _builtin_loading:
        _builtin_loading = True
        from service.domain import builtin  # noqa: F401  (declaring registers them)


def get(name: str) -> JobType:
    """The declaration of job type `name` in this process, or UnknownJobType."""
    return REGISTRY.get(name)


def load(spec: str) -> list[str]:
    """Import the modules `spec` names (comma-separated "pkg.module"), so the job types they
    declare are registered; returns the module names. The current directory is importable, as
    for `python -m`. DeclarationError says in one line what to fix."""
    modules = [m.strip() for m in spec.split(",") if m.strip()]
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    for module in modules:
        module = module.split(":", 1)[0]
        try:
            importlib.import_module(module)
        except DeclarationError as exc:
            raise DeclarationError(f"--app {module}: {exc}") from None
        except ImportError as exc:
            raise DeclarationError(
                f"--app {module} cannot be imported ({type(exc).__name__}: {exc}); check the "
                "module path and that its package is installed or in the current directory"
            ) from None
        except Exception as exc:
            raise DeclarationError(
                f"--app {module} failed while importing: {type(exc).__name__}: {exc}") from None
    _load_builtin()
    return modules


# -- the code ----------------------------------------------------------------------------------
# Used by workers (workers/tasks/declared.py) and jobq.testing; never by the API.


def resolve(job_type: JobType) -> Callable[..., Any]:
    """The function that runs `job_type`, imported if the declaration names it; a
    DeclarationError says what is wrong in one line."""
    if job_type.function is not None:
        func = job_type.function
    else:
        assert job_type.implementation
        try:
            func = import_code(job_type.implementation)
        except (ImportError, AttributeError) as exc:
            raise DeclarationError(
                f"job type {job_type.name!r}: its implementation {job_type.implementation} "
                f"cannot be imported ({type(exc).__name__}: {exc})") from None
    wants_async = job_type.runs_in == "async"
    if not callable(func) or inspect.iscoroutinefunction(func) != wants_async:
        kind = "an async function" if wants_async else "a plain (sync) function"
        raise DeclarationError(
            f"job type {job_type.name!r}: runs_in={job_type.runs_in!r} needs {kind}; "
            f"{job_type.implementation or job_type.origin} is not one")
    return func


def import_code(path: str) -> Callable[..., Any]:
    """`pkg.module:name.attr`; a jobq task found there stands for its function."""
    module_name, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target.func if isinstance(target, Task) and target.func else target


def takes_context(job_type: JobType, func: Callable[..., Any]) -> bool:
    """Whether `func` takes the context first: its first parameter is one (by name or type),
    or, taking the payload as one Struct, it has two parameters."""
    if context_parameter(func) is not None:
        return True
    return not job_type.payload_as_fields and len(inspect.signature(func).parameters) >= 2


def arguments(job_type: JobType, payload: msgspec.Struct
               ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if job_type.payload_as_fields:
        return (), {f: getattr(payload, f) for f in payload.__struct_fields__}
    return (payload,), {}



def __getattr__(name: str) -> Any:
    # jobq's own declarations under the names this module gave them before they moved to
    # service/domain/builtin.py.
    from service.domain import builtin

    aliases = {"SYSTEM_NOOP": builtin.noop, "SYSTEM_SLEEP": builtin.sleep,
               "MESH_CONVERT": builtin.convert, "SYSTEM_WEBHOOK": builtin.webhook}
    if name in aliases:
        return aliases[name].job_type
    if name in ("NoopPayload", "SleepPayload", "ConvertPayload", "WebhookPayload"):
        return getattr(builtin, name)
    raise AttributeError(name)
