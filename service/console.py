"""The people's commands of `jobq`: submit, convert, jobs, queues, schedules, workers.

They go through the REST API only (`--url`, else `JOBQ_URL`, else http://127.0.0.1:8000).
Output is a table for people and JSON with `--json` for scripts; an error prints the API's
`detail` on stderr, never a traceback. Exit codes (docs/cli.md):

  0  done (with --wait: the job succeeded)
  1  the job failed or was cancelled (--wait)
  2  the command line was wrong
  3  the API refused the request (4xx: not found, invalid, conflict, …)
  4  the API could not be reached, failed (5xx), or did not answer JSON
  5  a local file could not be read or written
  130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table

from service import client as api

EXIT_JOB_FAILED = 1
EXIT_REFUSED = 3
EXIT_UNAVAILABLE = 4
EXIT_LOCAL_FILE = 5
EXIT_INTERRUPTED = 130

POLL_SECONDS = 0.5
"""How often --wait asks for the job while it is not finished."""

# A terminal's own width for people; wide enough for whole ids and times when piped.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def client_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """--url, --key and --json: on every command that talks to the API, and on the groups
    (`jobq queues --url U show Q`), whose values reach the subcommand (`_group_options`)."""
    for option in reversed([
            click.option("--url", envvar="JOBQ_URL", default=api.DEFAULT_URL,
                         show_default=True, help="the jobq API (env JOBQ_URL)"),
            click.option("--key", envvar="JOBQ_KEY", default=None,
                         help="the API key to send (env JOBQ_KEY; docs/security.md)"),
            click.option("--json", "as_json", is_flag=True,
                         help="print JSON instead of a table")]):
        function = option(function)
    return function


def client_command(function: Callable[..., Any]) -> Callable[..., Any]:
    """Adds --url and --json, opens the client, and turns API errors into a line and an exit
    code."""

    @client_options
    @functools.wraps(function)
    def wrapper(url: str, key: str | None, as_json: bool, **kwargs: Any) -> None:
        url, key, as_json = _group_options(url, key, as_json)
        try:
            with api.Client(url, key) as http:
                function(http, as_json, **kwargs)
        except api.ApiError as exc:
            _fail(exc.detail, EXIT_REFUSED if 400 <= exc.status < 500 else EXIT_UNAVAILABLE)
        except OSError as exc:  # a local file: the API was not the problem
            where = f" {exc.filename}" if exc.filename else ""
            _fail(f"cannot use{where}: {exc.strerror or exc}", EXIT_LOCAL_FILE)
        except KeyboardInterrupt:
            _fail("interrupted", EXIT_INTERRUPTED)

    return wrapper


def _group_options(url: str, key: str | None,
                   as_json: bool) -> tuple[str, str | None, bool]:
    """`jobq queues --url U --key K --json pause Q` means the same as `jobq queues pause Q
    --url U --key K --json`: options given to the group (`queues`, `schedules`) apply to its
    subcommand unless the subcommand gives its own."""
    context = click.get_current_context()
    parent = context.parent
    if parent is None or "url" not in parent.params:
        return url, key, as_json
    source = click.core.ParameterSource
    if (context.get_parameter_source("url") is not source.COMMANDLINE
            and parent.get_parameter_source("url") is source.COMMANDLINE):
        url = parent.params["url"]
    if ("key" in parent.params and context.get_parameter_source("key") is not source.COMMANDLINE
            and parent.get_parameter_source("key") is source.COMMANDLINE):
        key = parent.params["key"]
    return url, key, as_json or bool(parent.params.get("as_json"))


def _fail(message: str, code: int) -> None:
    err.print(f"jobq: {message}", markup=False, highlight=False)
    sys.exit(code)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


# -- submit and convert ---------------------------------------------------------------------


@click.command()
@click.argument("job_type", metavar="TYPE")
@click.option("--payload", default="{}", show_default=True, help="the job's payload, as JSON")
@click.option("--queue", help="queue (default: the type's)")
@click.option("--priority", type=int, help="higher runs first (-1000..1000)")
@click.option("--delay", "delay_seconds", type=float, help="start no sooner than this many seconds")
@click.option("--max-attempts", type=int, help="attempts before the job fails")
@click.option("--timeout", "timeout_seconds", type=float, help="seconds one attempt may run")
@click.option("--idempotency-key", help="replays with the same key return the first job")
@click.option("--wait", is_flag=True, help="follow the job with a progress bar until it ends")
@client_command
def submit(http: api.Client, as_json: bool, job_type: str, payload: str, wait: bool,
           idempotency_key: str | None, **options: Any) -> None:
    """Submit a job of TYPE; print it, or follow it to the end with --wait."""
    try:
        body_payload = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    body = {"type": job_type, "payload": body_payload,
            **{k: v for k, v in options.items() if v is not None}}
    job = http.submit(body, idempotency_key)
    if wait:
        job = _follow(http, job, as_json)
    _show_job(job, as_json)
    _exit_for(job, wait)


@click.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "target", required=True, help="output format, e.g. glb, stl, obj, ply")
@click.option("--options", help="conversion options, as a JSON object")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="where to save the result (a file, or a directory; default: here)")
@client_command
def convert(http: api.Client, as_json: bool, files: tuple[Path, ...], target: str,
            options: str | None, output: Path | None) -> None:
    """Upload FILES (a mesh with its sidecars, or one ZIP), convert them, download the result."""
    if output is not None and not output.is_dir() and not output.parent.is_dir():
        # Found out now, not after the upload and the conversion.
        raise click.BadParameter(f"no directory {output.parent} to save into",
                                 param_hint="-o/--output")
    total = sum(f.stat().st_size for f in files)
    with _bar(as_json, transfer=True) as bar:
        task = bar.add_task("uploading", total=total)
        job = http.convert(list(files), target, options,
                           on_bytes=lambda n: bar.advance(task, n))
    job = _follow(http, job, as_json)
    if job["status"] != "succeeded":
        _show_job(job, as_json)
        _exit_for(job, True)
    directory, name = Path("."), None
    if output is not None:
        directory, name = (output, None) if output.is_dir() else (output.parent, output.name)
    with _bar(as_json, transfer=True) as bar:
        task = bar.add_task("downloading", total=None)
        saved = http.download(job["id"], directory, name,
                              on_bytes=lambda n: bar.advance(task, n),
                              on_total=lambda n: bar.update(task, total=n))
    if as_json:
        _print_json({"job": job, "output": str(saved.path), "bytes": saved.size})
    else:
        out.print(f"saved {saved.path} ({saved.size:,} bytes) from job {job['id']}")


def _follow(http: api.Client, job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Poll the job until it ends, drawing its progress and stage."""
    with _bar(quiet) as bar:
        task = bar.add_task(_label(job), total=100, completed=job.get("progress") or 0)
        while job["status"] not in api.TERMINAL:
            try:
                time.sleep(POLL_SECONDS)
                job = http.job(job["id"])
            except KeyboardInterrupt:
                bar.stop()
                _fail(f"interrupted; job {job['id']} goes on (jobq jobs show {job['id']})",
                      EXIT_INTERRUPTED)
            bar.update(task, completed=job.get("progress") or 0, description=_label(job))
        if job["status"] == "succeeded":
            bar.update(task, completed=100)
    return job


def _label(job: dict[str, Any]) -> str:
    words = [job["status"], job.get("stage") or ""]
    return " ".join(w for w in words if w)


def _bar(quiet: bool, transfer: bool = False) -> Progress:
    columns: list[Any] = [TextColumn("{task.description:<20}"), BarColumn()]
    columns += ([DownloadColumn(), TransferSpeedColumn()] if transfer
                else [TaskProgressColumn(), TimeElapsedColumn()])
    return Progress(*columns, console=err, disable=quiet, transient=False)


def _exit_for(job: dict[str, Any], waited: bool) -> None:
    if waited and job["status"] in ("failed", "cancelled"):
        sys.exit(EXIT_JOB_FAILED)


# -- jobs -----------------------------------------------------------------------------------


@click.group()
def jobs() -> None:
    """List, show, retry, cancel and delete jobs."""


@jobs.command("list")
@click.option("--status", type=click.Choice(
    ["queued", "scheduled", "running", "succeeded", "failed", "cancelled"]))
@click.option("--type", "job_type", help="only jobs of this type")
@click.option("--queue", help="only jobs in this queue")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--cursor", help="the next_cursor of an earlier page")
@client_command
def list_jobs(http: api.Client, as_json: bool, job_type: str | None, **filters: Any) -> None:
    """Jobs, newest first."""
    page = http.jobs(type=job_type, **filters)
    if as_json:
        _print_json(page)
        return
    table = _table("id", "type", "queue", "status", "progress", "attempts", "created (UTC)")
    for job in page["items"]:
        table.add_row(job["id"], job["type"], job["queue"], job["status"],
                      f"{job['progress']}%", f"{job['attempts']}/{job['max_attempts']}",
                      _when(job["created_at"]))
    out.print(table)
    if page.get("next_cursor"):
        out.print(f"more: --cursor {page['next_cursor']}")


@jobs.command("show")
@click.argument("job_id")
@click.option("--history", is_flag=True, help="also every attempt and state change")
@client_command
def show_job(http: api.Client, as_json: bool, job_id: str, history: bool) -> None:
    """One job, with its history on request."""
    job = http.job(job_id)
    events = http.history(job_id) if history else None
    if as_json:
        _print_json({**job, "history": events} if history else job)
        return
    _show_job(job, False)
    if events is not None:
        table = _table("at", "event", "attempt", "worker", "message")
        for e in events["items"]:
            table.add_row(e["at"], e["event"], str(e["attempt"] or ""), e["worker"] or "",
                          e["message"] or (e["error"] or {}).get("message") or "")
        out.print(table)


def _job_action(name: str, call: Callable[[api.Client, str], Any], summary: str) -> None:
    @jobs.command(name, help=summary)
    @click.argument("job_id")
    @client_command
    def action(http: api.Client, as_json: bool, job_id: str) -> None:
        job = call(http, job_id)
        if job is None:
            if as_json:
                _print_json({"id": job_id, "deleted": True})
            else:
                out.print(f"deleted {job_id}")
            return
        _show_job(job, as_json)


_job_action("retry", api.Client.retry, "Requeue a failed or cancelled job.")
_job_action("cancel", api.Client.cancel, "Cancel a queued, scheduled or running job.")
_job_action("delete", api.Client.delete, "Delete a finished job and its files.")


def _show_job(job: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(job)
        return
    table = Table(show_header=False, box=None)
    for key in ("id", "type", "queue", "status", "progress", "stage", "attempts",
                "created_at", "started_at", "finished_at"):
        value = job.get(key)
        if key == "attempts":
            value = f"{job['attempts']}/{job['max_attempts']}"
        if value is not None:
            table.add_row(key, str(value))
    if job.get("result") is not None:
        table.add_row("result", json.dumps(job["result"]))
    if job.get("error"):
        table.add_row("error", f"{job['error']['type']}: {job['error']['message']}")
    out.print(table)


# -- queues and workers ---------------------------------------------------------------------


@click.group(invoke_without_command=True)
@client_options
@click.pass_context
def queues(context: click.Context, url: str, key: str | None, as_json: bool) -> None:
    """Queues: counts and pause state (`jobq queues` alone lists them)."""
    if context.invoked_subcommand is None:
        context.invoke(list_queues, url=url, key=key, as_json=as_json)


@queues.command("list")
@client_command
def list_queues(http: api.Client, as_json: bool) -> None:
    """Every queue with its counts."""
    items = http.queues()
    if as_json:
        _print_json(items)
        return
    table = _table("queue", "paused", "queued", "scheduled", "running", "succeeded", "failed",
                  "cancelled", "oldest queued", "limits")
    for q in items:
        c = q["counts"]
        table.add_row(q["name"], "yes" if q["paused"] else "no",
                      *(str(c[k]) for k in ("queued", "scheduled", "running", "succeeded",
                                            "failed", "cancelled")),
                      _age(q["oldest_queued_age_seconds"], unit=True), _limits(q))
    out.print(table)


def _limits(q: dict[str, Any]) -> str:
    """A queue's rate and concurrency limits, short: `10 per 1 s, 2 at once`."""
    parts = []
    if q.get("rate_limit"):
        rate = q["rate_limit"]
        parts.append(f"{rate['max_starts']} per {_period(rate['per_seconds'])}")
    if q.get("concurrency_limit") is not None:
        parts.append(f"{q['concurrency_limit']} at once")
    return ", ".join(parts)


@queues.command("show")
@click.argument("name")
@client_command
def show_queue(http: api.Client, as_json: bool, name: str) -> None:
    """One queue's settings, counts and ages."""
    _show_queue(http.queue(name), as_json)


@queues.command("set")
@click.argument("name")
@click.argument("settings")
@client_command
def set_queue(http: api.Client, as_json: bool, name: str, settings: str) -> None:
    """Change NAME's settings, given as a JSON object (the body of PATCH /api/v1/queues/NAME),
    e.g. '{"concurrency_limit": 2, "rate_limit": {"max_starts": 10, "per_seconds": 1}}'."""
    _show_queue(http.set_queue(name, _json_argument(settings, "SETTINGS")), as_json)


@queues.command("clean")
@click.argument("name")
@click.option("--status", required=True,
              type=click.Choice(["succeeded", "failed", "cancelled"]),
              help="which finished jobs to delete")
@click.option("--older-than", "older_than_seconds", type=float, default=0, show_default=True,
              help="only jobs finished more than this many seconds ago")
@click.option("--limit", type=int, help="delete at most this many")
@client_command
def clean_queue(http: api.Client, as_json: bool, name: str, **body: Any) -> None:
    """Delete finished jobs of one status from NAME, oldest first."""
    done = http.clean(name, {k: v for k, v in body.items() if v is not None})
    if as_json:
        _print_json(done)
    else:
        out.print(f"queue {name}: deleted {done['deleted']} job(s)")


def _show_queue(q: dict[str, Any], as_json: bool) -> None:
    """A queue's counts, ages and policies, one per line, in words (docs/queues.md)."""
    if as_json:
        _print_json(q)
        return
    counts = q["counts"]
    rate = q.get("rate_limit")
    backoff = q.get("backoff") or {}
    lines = [
        ("name", q["name"]),
        ("paused", "yes" if q["paused"] else "no"),
        ("counts", "  ".join(f"{status} {n}" for status, n in counts.items())),
        ("oldest queued", _age(q["oldest_queued_age_seconds"], unit=True) or "-"),
        ("oldest running", _age(q["oldest_running_age_seconds"], unit=True) or "-"),
        ("rate limit", f"{rate['max_starts']} starts per {_period(rate['per_seconds'])}"
         if rate else "none"),
        ("concurrency limit", _or(q.get("concurrency_limit"), "none", "{} at once")),
        ("max attempts", _or(q.get("max_attempts"), "the job type's")),
        ("timeout", _or(q.get("timeout_seconds"), "the job type's", transform=_period)),
        ("backoff", ", ".join(
            f"{key.removesuffix('_seconds')} "
            f"{_period(backoff[key]) if key.endswith('_seconds') else format(backoff[key], 'g')}"
            for key in ("base_seconds", "cap_seconds", "jitter")
            if backoff.get(key) is not None) or "the job type's"),
    ]
    for status, keep in (q.get("retention") or {}).items():
        parts = []
        if keep["max_age_seconds"] is not None:
            parts.append(_period(keep["max_age_seconds"]))
        if keep["max_count"] is not None:
            parts.append(f"the newest {keep['max_count']}")
        lines.append((f"keep {status}", ", ".join(parts) or "forever"))
    table = Table(show_header=False, box=None)
    for key, value in lines:
        table.add_row(key, value)
    out.print(table)


def _or(value: Any, missing: str, pattern: str = "{}", transform: Callable[[Any], str] = str
        ) -> str:
    return missing if value is None else pattern.format(transform(value))


def _period(seconds: float) -> str:
    """86400 → 1 d, 90 → 1 min 30 s, 1.5 → 1.5 s."""
    if seconds < 60:
        return f"{seconds:g} s"
    rest, parts = round(seconds), []
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size} {unit}")
            rest %= size
    return " ".join(parts[:2])


def _json_argument(raw: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=name)
    return value


def _show_mapping(value: dict[str, Any], as_json: bool) -> None:
    """A JSON object as key/value lines (nested objects as JSON), or as JSON."""
    if as_json:
        _print_json(value)
        return
    table = Table(show_header=False, box=None)
    for key, item in value.items():
        table.add_row(key, _cell(item))
    out.print(table)


def _cell(value: Any) -> str:
    """A JSON value in a table: objects as JSON, null as -, booleans as yes or no."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _pause_command(name: str, paused: bool, summary: str) -> None:
    @queues.command(name, help=summary)
    @click.argument("queue")
    @client_command
    def action(http: api.Client, as_json: bool, queue: str) -> None:
        state = http.pause(queue, paused)
        if as_json:
            _print_json(state)
        else:
            out.print(f"queue {queue}: {'paused' if paused else 'running'}")


_pause_command("pause", True, "Stop every worker starting jobs of QUEUE.")
_pause_command("resume", False, "Let workers start jobs of QUEUE again.")


def _table(*names: str) -> Table:
    """A table whose cells never wrap: ids and times stay whole."""
    return Table(*(Column(n, no_wrap=True) for n in names), box=box.SIMPLE_HEAD)


def _when(stamp: str | None) -> str:
    """An RFC 3339 time as `YYYY-MM-DD HH:MM:SS`, for tables."""
    return "" if stamp is None else stamp.replace("T", " ")[:19]


def _age(seconds: float | None, unit: bool = False) -> str:
    return "" if seconds is None else f"{seconds:.1f}{' s' if unit else ''}"


@click.command()
@client_command
def workers(http: api.Client, as_json: bool) -> None:
    """Live workers."""
    items = http.workers()
    if as_json:
        _print_json(items)
        return
    table = _table("name", "host", "pid", "queues", "concurrency", "running", "heartbeat age (s)")
    for w in items:
        table.add_row(w["name"], w["host"], str(w["pid"]), ",".join(w["queues"]) or "all",
                      str(w["concurrency"]), str(len(w["running_jobs"])),
                      f"{w['heartbeat_age_seconds']:.1f}")
    out.print(table)


@click.group(invoke_without_command=True)
@client_options
@click.pass_context
def schedules(context: click.Context, url: str, key: str | None, as_json: bool) -> None:
    """Recurring jobs (`jobq schedules` alone lists them)."""
    if context.invoked_subcommand is None:
        context.invoke(list_schedules, url=url, key=key, as_json=as_json)


@schedules.command("list")
@client_command
def list_schedules(http: api.Client, as_json: bool) -> None:
    """Every schedule with its last and next tick."""
    items = http.schedules()
    if as_json:
        _print_json(items)
        return
    table = _table("name", "when", "time zone", "job type", "queue", "paused", "next tick",
                   "last job")
    for item in items:
        when = item["cron"] or f"every {_period(item['interval_seconds'])}"
        job = item["job"]
        table.add_row(item["name"], when, item["timezone"], job["type"],
                      job.get("queue") or "(the type's)", "yes" if item["paused"] else "no",
                      _when(item["next_tick_at"]), item["last_job_id"] or "")
    out.print(table)


@schedules.command("show")
@click.argument("name")
@client_command
def show_schedule(http: api.Client, as_json: bool, name: str) -> None:
    """One schedule."""
    _show_mapping(http.schedule(name), as_json)


@schedules.command("set")
@click.argument("name")
@click.argument("spec")
@client_command
def set_schedule(http: api.Client, as_json: bool, name: str, spec: str) -> None:
    """Create or replace schedule NAME from SPEC, a JSON object (the body of PUT
    /api/v1/schedules/NAME), e.g. '{"cron": "0 3 * * *", "job": {"type": "system.noop"}}'."""
    _show_mapping(http.put_schedule(name, _json_argument(spec, "SPEC")), as_json)


@schedules.command("delete")
@click.argument("name")
@client_command
def delete_schedule(http: api.Client, as_json: bool, name: str) -> None:
    """Delete schedule NAME (jobs it made stay)."""
    http.delete_schedule(name)
    if as_json:
        _print_json({"name": name, "deleted": True})
    else:
        out.print(f"deleted schedule {name}")


COMMANDS: list[click.Command] = [submit, convert, jobs, queues, schedules, workers]
"""The commands `jobq` adds for people (service/cli.py)."""
