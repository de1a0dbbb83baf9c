"""live.js, the dashboard's one module for live updates, against a real event stream.

The API's event routes (issue 15) are not there yet, so the pages fall back to calm refreshes,
which the other browser tests see. Here a small real server streams Server-Sent Events to the
shipped live.js, to pin down what the pages will do once the routes exist: refresh on events, a
burst of events costing one or two refreshes, no polling while live, and polling when the
stream answers 404.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from litestar import Litestar, Response, get
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.static_files import create_static_files_router
from playwright.sync_api import Browser, Page, expect

from service.api.dashboard import ASSETS
from tests.support import free_port

HARNESS = """<!doctype html><meta charset="utf-8"><title>live.js</title>
<p id="mode"></p>
<script type="module">
import { onStatus, watch } from "/assets/js/live.js";
window.refreshes = 0;
onStatus(({ mode }) => { document.getElementById("mode").textContent = mode; });
watch({
  stream: new URLSearchParams(location.search).get("stream"),
  pollMs: 1000,
  minGapMs: 500,
  refresh: async () => { window.refreshes += 1; },
});
</script>"""

events: queue.Queue[str] = queue.Queue()


@get("/harness", media_type="text/html")
async def harness() -> str:
    return HARNESS


@get("/events")
async def stream() -> ServerSentEvent:
    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        sent = 0
        while True:
            try:
                name = events.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.02)
                continue
            sent += 1
            yield ServerSentEventMessage(data='{"progress": 1}', event=name, id=sent)
    return ServerSentEvent(messages())


@get("/no-events")
async def no_events() -> Response[str]:
    return Response("no such route", status_code=404)


@pytest.fixture(scope="module")
def stand_in() -> Iterator[str]:
    """A server with live.js, a page that uses it, and a real event stream."""
    app = Litestar([harness, stream, no_events,
                    create_static_files_router(path="/assets", directories=[ASSETS])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def tab(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


def refreshes(page: Page) -> int:
    return page.evaluate("window.refreshes")


def test_events_refresh_the_page_and_a_burst_costs_one_or_two(tab: Page, stand_in: str) -> None:
    tab.goto(f"{stand_in}/harness?stream=/events")
    expect(tab.locator("#mode")).to_have_text("live")
    tab.wait_for_timeout(1_000)
    before = refreshes(tab)
    assert before in (1, 2)  # at once, and maybe again when the stream opened

    for _ in range(50):
        events.put("progress")
    tab.wait_for_timeout(1_500)
    after_burst = refreshes(tab)
    assert 1 <= after_burst - before <= 2, f"{after_burst - before} refreshes for 50 events"

    # Live, nothing happens: no polling (it would have refreshed twice in this time).
    tab.wait_for_timeout(2_200)
    assert refreshes(tab) == after_burst

    events.put("message")  # an unnamed event counts too
    tab.wait_for_timeout(1_000)
    assert refreshes(tab) == after_burst + 1


def test_a_missing_stream_falls_back_to_polling(tab: Page, stand_in: str) -> None:
    tab.goto(f"{stand_in}/harness?stream=/no-events")
    expect(tab.locator("#mode")).to_have_text("polling")
    start = refreshes(tab)
    tab.wait_for_timeout(3_300)
    # Every pollMs (1 s here): three more, give or take the timer's phase.
    assert 2 <= refreshes(tab) - start <= 4
