"""examples/: each job type submitted over REST and run by a real `jobq worker --app
examples.jobs`; the e-mail goes to a real SMTP server (aiosmtpd) started here."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from email import message_from_bytes
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from PIL import Image

import examples.jobs  # noqa: F401  (the API of this process knows the types, as with --app)
from tests.integration.test_worker import eventually, status_is

pytestmark = pytest.mark.slow


class Inbox:
    """An aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, controller.port
    controller.stop()


@pytest.fixture
def example_worker(start_worker, smtp_server, tmp_path):
    _, port = smtp_server
    output = tmp_path / "output"
    start_worker("--app", "examples.jobs", env={
        "EXAMPLES_SMTP_HOST": "127.0.0.1", "EXAMPLES_SMTP_PORT": str(port),
        "EXAMPLES_OUTPUT_DIR": str(output)})
    return output


async def run(client, type_: str, payload: dict, **fields) -> dict:
    response = await client.post("/api/v1/jobs",
                                 json={"type": type_, "payload": payload, **fields})
    assert response.status_code == 201, response.text
    done = await eventually(status_is(client, response.json()["id"], "succeeded", "failed"),
                            timeout=60)
    assert done["status"] == "succeeded", done["error"]
    return done


async def test_an_email_reaches_a_real_smtp_server(client, smtp_server, example_worker):
    inbox, _ = smtp_server
    done = await run(client, "examples.send_email", {
        "to": "ada@example.test", "subject": "Your export is ready", "body": "See attached."})
    assert done["queue"] == "mail" and done["result"] == {"to": "ada@example.test",
                                                          "refused": []}
    [(recipients, message)] = inbox.messages
    assert recipients == ["ada@example.test"]
    assert message["Subject"] == "Your export is ready"
    assert message.get_payload().strip() == "See attached."


async def test_an_email_is_retried_while_the_server_is_away(client, smtp_server, start_worker,
                                                             tmp_path):
    # A worker pointed at a port nobody listens on: the attempts fail and are retried.
    start_worker("--app", "examples.jobs", env={"EXAMPLES_SMTP_HOST": "127.0.0.1",
                                                "EXAMPLES_SMTP_PORT": str(free_port())})
    response = await client.post("/api/v1/jobs", json={
        "type": "examples.send_email", "payload": {"to": "a@example.test", "subject": "x"},
        "max_attempts": 2, "backoff": {"delays": [0.2]}})
    done = await eventually(status_is(client, response.json()["id"], "failed"), timeout=60)
    assert done["attempts"] == 2 and done["error"]["type"] == "ConnectionRefusedError"


async def test_rows_export_to_a_csv_file(client, example_worker):
    rows = [{"id": i, "name": f"item {i}", "price": i * 1.5} for i in range(2500)]
    done = await run(client, "examples.export_csv",
                     {"name": "items.csv", "rows": rows, "columns": ["id", "name"]})
    text = (example_worker / "items.csv").read_text()
    read = list(csv.DictReader(text.splitlines()))
    assert len(read) == 2500 and read[7] == {"id": "7", "name": "item 7"}
    assert done["result"]["rows"] == 2500 and done["progress"] == 100


async def test_an_export_name_that_leaves_the_folder_is_a_422(client):
    response = await client.post("/api/v1/jobs", json={
        "type": "examples.export_csv", "payload": {"name": "../x.csv", "rows": []}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "payload.name"


async def test_an_image_gets_a_thumbnail_in_a_child_process(client, example_worker, tmp_path):
    source = tmp_path / "photo.jpg"
    Image.new("RGB", (1200, 800), (30, 120, 200)).save(source)
    done = await run(client, "examples.thumbnail", {"source": str(source), "size": 150})
    assert done["result"]["original"] == [1200, 800]
    with Image.open(example_worker / "photo-150.png") as made:
        assert made.size == (150, 100)


async def test_a_file_that_is_no_image_fails_for_good(client, example_worker, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    response = await client.post("/api/v1/jobs", json={
        "type": "examples.thumbnail", "payload": {"source": str(tmp_path / "notes.txt")}})
    done = await eventually(status_is(client, response.json()["id"], "failed"), timeout=60)
    assert (done["attempts"], done["error"]["type"]) == (1, "PermanentJobError")


async def test_cleanup_removes_only_old_files(client, example_worker):
    example_worker.mkdir(parents=True, exist_ok=True)
    old, new = example_worker / "old.csv", example_worker / "new.csv"
    for path in (old, new):
        path.write_text("x")
    week_ago = time.time() - 7 * 86400
    os.utime(old, (week_ago, week_ago))
    done = await run(client, "examples.cleanup", {"older_than_seconds": 86400})
    assert done["result"] == {"removed": ["old.csv"]}
    assert not old.exists() and new.exists()


def test_the_declarations_import_without_pillow():
    code = ("import sys, examples.jobs; "
            "print('PIL' in sys.modules, 'examples.images' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out == ["False", "False"]
