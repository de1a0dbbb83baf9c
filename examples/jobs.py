"""The example project's job types: e-mail, a CSV export, image thumbnails and a cleanup.

This module only declares: the API imports it (`jobq serve --app examples.jobs`) to list the
types and check payloads, so it imports nothing heavy. The thumbnail's code, which needs
Pillow, lives in examples/images.py and only workers import it.

Where things go is configuration, not payload: EXAMPLES_SMTP_HOST / EXAMPLES_SMTP_PORT (the
mail server, default localhost:25) and EXAMPLES_OUTPUT_DIR (exports and thumbnails, default
./example-output).
"""

from __future__ import annotations

import csv
import os
import smtplib
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated, Any

import msgspec

import jobq

app = jobq.App(queue="examples")


def output_dir() -> Path:
    folder = Path(os.environ.get("EXAMPLES_OUTPUT_DIR", "example-output")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def inside_output(name: str) -> Path:
    """A file name as a path in the output folder; a name that leaves it is refused for good."""
    path = (output_dir() / name).resolve()
    if path.parent != output_dir():
        raise jobq.PermanentJobError(f"{name!r} is not a plain file name")
    return path


# -- e-mail: I/O, so a thread; SMTP hiccups are retried after 1 s, 5 s, 15 s ---------------------


@app.task(name="examples.send_email", queue="mail", timeout=30,
          retry=jobq.Retry(max_attempts=4, backoff=jobq.delays(1, 5, 15)),
          permanent_errors=(smtplib.SMTPRecipientsRefused,))
def send_email(ctx: jobq.SyncContext, to: str, subject: str, body: str = "",
               sender: str = "jobq-examples@localhost") -> dict[str, Any]:
    """Sends one e-mail through the SMTP server of EXAMPLES_SMTP_HOST:EXAMPLES_SMTP_PORT."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message.set_content(body)
    host = os.environ.get("EXAMPLES_SMTP_HOST", "localhost")
    port = int(os.environ.get("EXAMPLES_SMTP_PORT", "25"))
    ctx.progress(10, stage="connecting")
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        ctx.progress(50, stage="sending")
        refused = smtp.send_message(message)
    return {"to": to, "refused": sorted(refused)}


# -- a CSV export: rows in, a file out --------------------------------------------------------


class Export(msgspec.Struct, forbid_unknown_fields=True):
    """What to export: rows (objects), the columns in order (default: the first row's keys)
    and the file's name in the output folder."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[\w.-]+\.csv$")]
    rows: list[dict[str, Any]]
    columns: list[str] | None = None


@app.task(name="examples.export_csv", payload=Export, timeout=300)
def export_csv(ctx: jobq.SyncContext, export: Export) -> dict[str, Any]:
    """Writes rows to a CSV file in the output folder."""
    path = inside_output(export.name)
    columns = export.columns or (list(export.rows[0]) if export.rows else [])
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for n, row in enumerate(export.rows, 1):
            writer.writerow(row)
            if n % 1000 == 0:
                ctx.progress(100 * n / len(export.rows), stage="writing")
    return {"path": str(path), "rows": len(export.rows), "columns": columns}


# -- a thumbnail: CPU-bound, in a child process the timeout can kill ----------------------------


@app.task(name="examples.thumbnail", runs_in="process", timeout=60, retry=1,
          implementation="examples.images:thumbnail")
def thumbnail(ctx: jobq.SyncContext, source: str, size: int = 128, name: str | None = None
              ) -> dict[str, Any]:
    """Makes a PNG thumbnail (at most `size` pixels a side) of the image at `source`."""


# -- cleanup: remove old files from the output folder ---------------------------------------


@app.task(name="examples.cleanup", queue="maintenance", queueing_lock="examples.cleanup",
          retry=0)
async def cleanup(ctx: jobq.Context, older_than_seconds: float = 86_400,
                  suffixes: list[str] | None = None) -> dict[str, Any]:
    """Deletes files of the output folder older than `older_than_seconds` (only those ending
    in one of `suffixes`, if given). One at a time: a second one waits in the queue."""
    cutoff = time.time() - older_than_seconds
    removed = []
    for path in sorted(output_dir().iterdir()):
        if ctx.should_stop():
            break
        if path.is_file() and path.stat().st_mtime < cutoff and (
                not suffixes or path.name.endswith(tuple(suffixes))):
            path.unlink()
            removed.append(path.name)
    await ctx.progress(100, stage="done", message=f"{len(removed)} file(s) removed")
    return {"removed": removed}
