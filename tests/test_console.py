"""The web console (GET /) in a real browser: Debian's chromium, driven by Playwright's async API on
the test's own event loop, against the session's real hub (real MongoDB, Kafka and sandbox).

Nothing is deployed through the UI: functions and triggers are made through the API, events come
from Kafka, and the console has to show what happened. Screenshots of each page go to the test's
tmp dir (their paths are printed). Chromium or Playwright missing is a failure, never a skip:
./scripts/setup installs both.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import Hub
from tests.hubfixtures import API_TOKEN, Api
from tests.test_sources import produce

CHROMIUM = "/usr/bin/chromium"
# Root has no user namespaces for chromium's own sandbox; no GPU, no calls home, no first-run UI.
# Playwright starts every launch with a fresh temporary profile (--user-data-dir) and --headless.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]
WAIT_MS = 60_000  # events go through Kafka, a consumer group and the sandbox; the page polls every 3 s

ECHO = ("import time\n"
        "def handler(event, context):\n"
        "    print('echo got', event['data'])\n"
        "    time.sleep(((event['data'] or {}).get('value') or {}).get('sleep', 0))  # a slow message\n"
        "    return {'echo': event['data']}\n")
FAILING = "def handler(event, context):\n    raise ValueError('nope: ' + repr(event['data']['value']))\n"
FIXED = "def handler(event, context):\n    return {'fixed': True, 'data': event['data']}\n"


try:  # a missing Playwright fails every test here (below), it does not skip them
    from playwright.async_api import Page, async_playwright, expect
except ImportError as exc:  # pragma: no cover - the setup installs it
    PLAYWRIGHT_MISSING: str | None = f"playwright is not installed ({exc}); run ./scripts/setup"
else:
    PLAYWRIGHT_MISSING = None


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    if PLAYWRIGHT_MISSING:
        pytest.fail(PLAYWRIGHT_MISSING, pytrace=False)
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.fail(f"{CHROMIUM} is missing: run ./scripts/setup (apt-get install chromium)", pytrace=False)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


class Screens:
    """Full-page screenshots, numbered in the order taken, under the test's tmp dir."""

    def __init__(self, page: Page, directory: Path) -> None:
        self.page, self.directory = page, directory
        self.taken: list[Path] = []

    async def shot(self, name: str) -> Path:
        path = self.directory / f"{len(self.taken) + 1:02d}-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
async def page(browser: Any, hub: Hub, tmp_path: Path) -> AsyncIterator[Page]:
    """A fresh context (own sessionStorage) and page; fails the test on any uncaught page error."""
    context = await browser.new_context(viewport={"width": 1360, "height": 900}, base_url=hub.url)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and "Failed to load resource" not in msg.text else None)
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        await context.close()
    assert not problems, problems


async def login(page: Page, token: str = API_TOKEN) -> None:
    await page.goto("/")
    await expect(page.get_by_label("API token")).to_be_visible()
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Log in").click()


@pytest.mark.integration
async def test_console_flow(hub: Hub, api: Api, page: Page, tmp_path: Path, unique: str) -> None:
    screens = Screens(page, tmp_path)
    bootstrap = hub.settings.kafka_bootstrap
    fn, trigger, topic = f"con-{unique}", f"con-t-{unique}", f"con-{unique}"
    bad, bad_trigger, bad_topic = f"conbad-{unique}", f"conbad-t-{unique}", f"conbad-{unique}"
    await api.put_function(fn, ECHO, memory_mb=256)
    await api.put_trigger(trigger, fn, {"type": "kafka", "topic": topic})
    await api.put_function(bad, FAILING)
    await api.put_trigger(bad_trigger, bad, {"type": "kafka", "topic": bad_topic},
                          retry={"max_attempts": 1}, description="<b>not bold</b>")

    # -- log in: a wrong token is refused on the login form, the right one opens the functions
    await page.goto("/")
    await screens.shot("login")
    await login(page, "not-the-token")
    await expect(page.get_by_role("alert")).to_contain_text("Wrong token")
    await expect(page.locator("#main")).to_be_empty()
    await page.get_by_label("API token").fill(API_TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Functions")).to_be_visible()
    row = page.locator(f'tr[data-function="{fn}"]')
    await expect(row).to_contain_text("256 MB")
    await expect(page.locator(f'tr[data-function="{bad}"]')).to_be_visible()
    await screens.shot("functions")

    # -- a Kafka message: its invocation appears in the (auto-refreshing) list
    await page.get_by_role("link", name="Invocations", exact=True).click()
    await page.get_by_label("Trigger").fill(trigger)
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(rf"#/invocations\?trigger={trigger}$"))
    await expect(page.get_by_text("No invocation matches.")).to_be_visible()
    await produce(bootstrap, topic, [(b"k1", b'{"n": 1}')])
    first = page.locator("tr[data-invocation-id]")
    await expect(first).to_have_count(1, timeout=WAIT_MS)
    await expect(first).to_have_attribute("data-status", "succeeded")
    await expect(first).to_contain_text(trigger)
    await screens.shot("invocations")
    await first.get_by_role("link").first.click()  # open it: REPORT line, result, output
    await expect(page.locator("pre.report")).to_contain_text("Billed Duration")
    await expect(page.locator("#invocation-result")).to_contain_text('"n": 1')
    await expect(page.locator("#invocation-stdout")).to_contain_text("echo got {'value': {'n': 1}")
    await expect(page.get_by_role("heading", name="Events (1)")).to_be_visible()
    await screens.shot("invocation")

    # -- invoke from the function's page; what the function returns is shown as text, never markup
    await page.goto(f"/#/functions/{fn}")
    await expect(page.get_by_role("heading", name=fn)).to_be_visible()
    await expect(page.get_by_role("link", name=trigger).first).to_be_visible()
    payload = {"hello": "console", "html": "<img src=x onerror=\"window.pwned=1\"><b>x</b>"}
    await page.get_by_label("Event (JSON, sent as the request body)").fill(json.dumps(payload))
    # typing in a form pauses the auto-refresh (it would otherwise redraw under the user)
    await expect(page.locator("#refreshed")).to_have_text("auto-refresh paused while you edit")
    await page.get_by_role("button", name="Invoke").click()
    result = page.locator("#invoke-result")
    await expect(result).to_contain_text("succeeded")
    await expect(result.locator("pre.invoke-output")).to_contain_text('"hello": "console"')
    await expect(result.locator("pre.invoke-output")).to_contain_text('<img src=x onerror=\\"window.pwned=1\\">')
    await expect(result).to_contain_text("echo got")  # stdout
    assert await result.locator("img, b").count() == 0
    assert await page.evaluate("window.pwned") is None
    await screens.shot("function")
    await page.get_by_label("Event (JSON, sent as the request body)").fill("{not json")
    await page.get_by_role("button", name="Invoke").click()
    await expect(result.get_by_role("alert")).to_contain_text("not valid JSON")
    # the invocation made here and the Kafka one are in the function's recent list
    await expect(page.locator("tr[data-invocation-id]")).to_have_count(2, timeout=WAIT_MS)

    # -- a failing function's message becomes a dead letter; inspect it
    await produce(bootstrap, bad_topic, [(b"k", b'{"order": 7}')])
    await page.goto(f"/#/dead-letters?trigger={bad_trigger}")
    letter = page.locator("tr[data-dead-letter]")
    await expect(letter).to_have_count(1, timeout=WAIT_MS)
    await expect(letter).to_contain_text("ValueError: nope: {'order': 7}")
    await letter.get_by_role("link", name="inspect").click()
    await expect(page.get_by_role("heading", name="Attempts (1)")).to_be_visible()
    await expect(page.locator(".traceback")).to_contain_text("Traceback (most recent call last)")
    await expect(page.locator("#dead-letter-event")).to_contain_text('"order": 7')
    await screens.shot("dead-letter")

    # -- fix the function through the API, replay from the UI: the dead letter goes, a success appears
    await api.put_function(bad, FIXED)
    await page.go_back()
    await expect(letter).to_have_count(1)
    await screens.shot("dead-letters")
    await letter.get_by_role("button", name="Replay").click()
    await expect(page.get_by_text("queued for replay")).to_be_visible()
    await expect(letter).to_have_count(0, timeout=WAIT_MS)
    await expect(page.get_by_text(f"No dead letters for {bad_trigger}.")).to_be_visible()
    await page.goto(f"/#/invocations?trigger={bad_trigger}&status=succeeded")
    await expect(page.locator('tr[data-status="succeeded"]')).to_have_count(1, timeout=WAIT_MS)
    await screens.shot("replayed")

    # -- triggers: source, state, enabled, and the Kafka cursor: a backlog's lag, then zero. Three
    # messages of 2.5 s each keep offsets uncommitted for ~7 s: more than two refreshes of the page.
    await page.get_by_role("link", name="Triggers", exact=True).click()
    row = page.locator(f'tr[data-trigger="{trigger}"]')
    await expect(row).to_contain_text(f"kafka {topic}")
    await expect(row).to_contain_text("enabled")
    await expect(page.locator(f'tr[data-trigger="{bad_trigger}"]')).to_contain_text("everything")  # no filter
    await expect(row.locator(".cursor")).to_contain_text("p0: 1/1 lag 0", timeout=WAIT_MS)
    await produce(bootstrap, topic, [(f"s{i}".encode(), b'{"sleep": 2.5}') for i in range(3)])
    await expect(row.locator(".cursor .lag")).to_have_text(re.compile(r"^lag [1-3]$"), timeout=WAIT_MS)
    await screens.shot("triggers-lag")
    await expect(row.locator(".cursor")).to_contain_text("p0: 4/4 lag 0", timeout=WAIT_MS)
    await expect(row.locator(".cursor .lag")).to_have_text("lag 0")
    await screens.shot("triggers")
    # disable and enable again (PUT with the spec keys only)
    await row.get_by_role("button", name="Disable").click()
    await expect(row).to_contain_text("disabled")
    assert (await api.ok("GET", f"/v1/triggers/{trigger}"))["enabled"] is False
    await row.get_by_role("button", name="Enable").click()
    await expect(row.get_by_role("button", name="Disable")).to_be_visible()
    doc = await api.ok("GET", f"/v1/triggers/{trigger}")
    assert doc["enabled"] is True and doc["source"]["topic"] == topic
    await page.get_by_role("link", name=bad_trigger).click()  # a trigger's page; HTML shown as text
    await expect(page.get_by_text("<b>not bold</b>")).to_be_visible()
    await screens.shot("trigger")

    # -- usage: a chart of the function's invocations (4 from Kafka, 1 from the invoke form)
    await page.goto(f"/#/usage?function={fn}&period=24h&granularity=hour")
    chart = page.locator("svg.chart")
    await expect(chart).to_be_visible(timeout=WAIT_MS)
    await expect(page.locator('[data-total="invocations"] strong')).to_have_text("5", timeout=WAIT_MS)
    await expect(page.locator('[data-total="failures"] strong')).to_have_text("0")
    await expect(chart.locator("g[data-value]:not([data-value='0']) rect.bar").first).to_be_visible()
    assert await chart.locator("g[data-value]").count() >= 24  # every hour of the period, empty ones too
    await screens.shot("usage")
    await page.goto("/#/usage")  # every function: one bar each
    await expect(page.locator(f'svg.chart g[data-label="{fn}"]')).to_be_visible(timeout=WAIT_MS)
    await screens.shot("usage-all")

    # -- log out: the token is gone, a reload stays on the login
    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_label("API token")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    await page.reload()
    await expect(page.get_by_label("API token")).to_be_visible()
    print("screenshots:", *screens.taken, sep="\n  ")


@pytest.mark.integration
async def test_console_replays_all_of_a_trigger_and_purges(hub: Hub, api: Api, page: Page, tmp_path: Path,
                                                          unique: str) -> None:
    screens = Screens(page, tmp_path)
    fn, trigger, topic = f"conall-{unique}", f"conall-t-{unique}", f"conall-{unique}"
    await api.put_function(fn, FAILING)
    await api.put_trigger(trigger, fn, {"type": "kafka", "topic": topic}, retry={"max_attempts": 1})
    await produce(hub.settings.kafka_bootstrap, topic, [(None, b'{"i": 1}'), (None, b'{"i": 2}'), (None, b'{"i": 3}')])
    await login(page)
    await page.get_by_role("link", name="Dead letters", exact=True).click()
    await page.get_by_label("Trigger").select_option(trigger)
    letters = page.locator("tr[data-dead-letter]")
    await expect(letters).to_have_count(3, timeout=WAIT_MS)
    await screens.shot("dead-letters")
    # replay all (one POST each) after a fix: every one runs again and goes away
    await api.put_function(fn, FIXED)
    await page.get_by_role("button", name="Replay all 3").click()
    await expect(page.get_by_text(f"3 dead letter(s) of {trigger} queued for replay.")).to_be_visible()
    await expect(letters).to_have_count(0, timeout=WAIT_MS)
    assert len(await api.invocations(trigger=trigger, status="succeeded")) == 3
    # purge, asked once more in the page
    await api.put_function(fn, FAILING)
    await produce(hub.settings.kafka_bootstrap, topic, [(None, b'{"i": 4}'), (None, b'{"i": 5}')])
    await expect(letters).to_have_count(2, timeout=WAIT_MS)
    await page.get_by_role("button", name="Purge").click()
    await expect(page.get_by_text(f"Delete every dead letter of {trigger}?")).to_be_visible()
    await page.get_by_role("button", name="Yes, purge").click()
    await expect(page.get_by_text(f"Deleted 2 dead letter(s) of {trigger}.")).to_be_visible()
    await expect(letters).to_have_count(0)
    assert (await api.ok("GET", "/v1/dead-letters", params={"trigger": trigger}))["dead_letters"] == []
    await screens.shot("purged")


@pytest.mark.integration
async def test_console_shows_na_without_usage_or_cursor(hub: Hub, api: Api, page: Page, tmp_path: Path,
                                                        unique: str) -> None:
    """A hub without usage metering (404) or trigger cursors: "n/a", and the rest works."""
    fn, trigger = f"conna-{unique}", f"conna-t-{unique}"
    await api.put_function(fn, ECHO)
    await api.put_trigger(trigger, fn, {"type": "kafka", "topic": f"conna-{unique}"})

    async def no_usage(route: Any) -> None:
        await route.fulfill(status=404, content_type="application/json", body='{"error": "Not Found"}')

    async def no_cursor(route: Any) -> None:
        response = await route.fetch()
        body = await response.json()
        for t in body.get("triggers", []):
            t.pop("cursor", None)
        await route.fulfill(response=response, json=body)

    await page.route(re.compile(r"/v1/usage(\?|$)"), no_usage)
    await page.route(re.compile(r"/v1/triggers$"), no_cursor)
    await login(page)
    await page.goto("/#/triggers")
    await expect(page.locator(f'tr[data-trigger="{trigger}"] .na')).to_have_text("n/a")
    await page.goto(f"/#/usage?function={fn}")
    await expect(page.locator(".usage-na")).to_contain_text("usage metering is not available")
    await Screens(page, tmp_path).shot("usage-na")


@pytest.mark.integration
async def test_console_shows_an_invocations_trace_id_and_links_it(hub: Hub, api: Api, page: Page,
                                                                  monkeypatch: pytest.MonkeyPatch, unique: str) -> None:
    """A record's trace_id (as a traced hub writes it) is shown as text to copy, linked to the
    trace UI through HUB_TRACE_URL_TEMPLATE (the API's trace_url), and to the trace's invocations."""
    fn = f"contr-{unique}"
    await api.put_function(fn, ECHO)
    out = await api.ok("POST", f"/v1/functions/{fn}/invoke", {"n": 1})
    inv_id, trace_id = out["invocation_id"], "4bf92f3577b34da6a3ce929d0e0e4736"
    # this session's hub does not trace: give its record the field a traced hub writes
    await hub.store.db.invocations.update_one({"_id": inv_id}, {"$set": {"trace_id": trace_id}})
    monkeypatch.setattr(hub.settings, "trace_url_template", "http://jaeger.invalid:16686/trace/{trace_id}")
    await login(page)
    await page.goto(f"/#/invocations/{inv_id}")
    await expect(page.locator("#invocation-trace-id")).to_have_text(trace_id)
    trace_link = page.locator("#invocation-trace-link")
    await expect(trace_link).to_have_attribute("href", f"http://jaeger.invalid:16686/trace/{trace_id}")
    await expect(trace_link).to_have_attribute("rel", "noopener noreferrer")
    await page.locator("#invocation-trace-copy").click()  # copies, or selects where there is no clipboard
    await expect(page.locator("#invocation-trace-copy")).to_have_text(re.compile("Copied|Selected"))
    await page.get_by_role("link", name="invocations of this trace").click()
    await expect(page).to_have_url(re.compile(rf"#/invocations\?trace_id={trace_id}$"))
    await expect(page.locator(f'tr[data-invocation-id="{inv_id}"]')).to_have_count(1)
    monkeypatch.setattr(hub.settings, "trace_url_template", "")  # no template: the id, no link
    await page.goto(f"/#/invocations/{inv_id}")
    await expect(page.locator("#invocation-trace-id")).to_have_text(trace_id)
    await expect(page.locator("#invocation-trace-link")).to_have_count(0)


@pytest.mark.integration
async def test_console_sends_a_refused_token_back_to_the_login(hub: Hub, page: Page) -> None:
    await login(page)
    await expect(page.get_by_role("heading", name="Functions")).to_be_visible()
    await page.evaluate("sessionStorage.setItem('trigger-hub-token', 'revoked')")  # e.g. the hub's token rotated
    await page.goto("/#/triggers")
    await expect(page.get_by_role("alert")).to_contain_text("refused the token")
    await expect(page.get_by_label("API token")).to_be_visible()


@pytest.mark.integration
async def test_console_files_are_public_and_nothing_else_is(hub: Hub, http: aiohttp.ClientSession) -> None:
    async with http.get(hub.url + "/") as r:
        assert r.status == 200 and r.content_type == "text/html"
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        page = await r.text()
    for name in re.findall(r'(?:src|href)="console/([^"]+)"', page):
        async with http.get(f"{hub.url}/console/{name}") as r:
            assert r.status == 200, name
            assert r.content_type in ("text/javascript", "text/css")
    for path in ("/console/nope.js", "/console/..%2Fapi.py", "/console/index.html", "/console/%2e%2e%2fapi.py",
                 "/console/app.js.map"):
        async with http.get(hub.url + path) as r:
            assert r.status == 404, path
            assert (await r.json())["error"]
    # normalised to /hub/api.py: no route at all, and an unmatched path needs a token (nothing is
    # public by accident, hub.web.scopes): 401 without one, never the file
    async with http.get(hub.url + "/console/../hub/api.py") as r:
        assert r.status == 401 and (await r.json())["error"]
    async with http.get(hub.url + "/v1/functions") as r:  # the API still needs the token
        assert r.status == 401


async def test_console_scripts_stay_small_and_never_parse_html() -> None:
    """Readable files, and data only ever rendered as text (no innerHTML / insertAdjacentHTML)."""
    directory = Path(__file__).parent.parent / "hub" / "web" / "console"
    for path in directory.iterdir():
        text = path.read_text()
        assert len(text.splitlines()) < 500, path
        if path.suffix == ".js":
            assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", text), path
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, path
