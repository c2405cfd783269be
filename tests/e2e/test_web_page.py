"""The web chat page in a real headless browser (Debian's chromium driven by Playwright,
never a downloaded browser) against a real daemon with tiny models.

The tests skip, saying why, only where /usr/bin/chromium is missing; .ci/run installs
it. Waits are on conditions with generous limits, never on the clock."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, Request, Route, sync_playwright

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.daemon import Daemon, add_model, running_daemon, wait_until
from tests.support.fakehub import FakeHub
from tests.support.tiny_gguf import write_tiny_gguf

WAIT_MS = 60_000

PULL_REPO = "tester/web-GGUF"

# Answer from the JSON grammar: a string that can only be this (quotes included).
# An answer forced by a grammar (its only allowed string): about 100 visible tokens, each
# adding text, so that growth is seen however the random-weight model would sample.
STREAMED = " ".join(["the cat sat on the mat and looked at the sky"] * 8)

HOSTILE = "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as started:
        yield started


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # Playwright gives each launch a fresh, temporary profile.
    launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture(scope="module")
def web_daemon(tmp_path_factory: pytest.TempPathFactory, tiny_gguf_path: Path) -> Iterator[Daemon]:
    """A daemon with ``tiny``, a second tiny model ``tiny-b``, ``tiny-r1`` (its template
    opens a thinking block, so answers are reasoning) and a fake Hub to pull from."""
    from tests.support import chat_templates

    folder = tmp_path_factory.mktemp("web-models")
    hub = FakeHub().start()
    pullable = write_tiny_gguf(folder / "web-Q4_K_M.gguf", seed=5)
    hub.add_repo(PULL_REPO, {pullable.name: pullable})
    home = folder / "localserve-home"
    try:
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        with running_daemon(home, tiny_gguf_path, env=env) as started:
            add_model(home, write_tiny_gguf(folder / "b.gguf", seed=1), "tiny-b")
            r1 = write_tiny_gguf(folder / "r1.gguf", chat_template=chat_templates.R1)
            add_model(home, r1, "tiny-r1")
            yield started
    finally:
        hub.stop()


@pytest.fixture
def page(browser: Browser, web_daemon: Daemon) -> Iterator[Page]:
    """A fresh browser context on the page; on leaving, checks that every request the
    browser made went to the daemon's own origin."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    opened = context.new_page()
    try:
        open_page(opened, web_daemon)
        yield opened
    finally:
        context.close()
    elsewhere = [url for url in requests if not url.startswith(web_daemon.url + "/")]
    assert not [url for url in elsewhere if not url.startswith("data:")], elsewhere


def open_page(page: Page, daemon: Daemon) -> None:
    page.goto(daemon.url + "/")
    page.wait_for_function("() => document.querySelectorAll('#model option').length > 0")


def force(page: Page, **fields: Any) -> list[dict[str, Any]]:
    """Merge ``fields`` into every /api/chat body the page sends (options merged too), to
    make the random-weight model's answer long or exact; returns the bodies as sent."""
    sent: list[dict[str, Any]] = []

    def handle(route: Route, request: Request) -> None:
        body = json.loads(request.post_data or "{}")
        for key, value in fields.items():
            body[key] = {**body.get(key, {}), **value} if key == "options" else value
        sent.append(body)
        route.continue_(post_data=json.dumps(body))

    page.route("**/api/chat", handle)
    return sent


def send(page: Page, text: str) -> None:
    page.locator("#prompt").focus()
    page.keyboard.type(text)
    page.keyboard.press("Enter")


def wait_for_answer(page: Page, index: int = -1) -> dict[str, Any]:
    """Wait until the answer is over; its text, thinking and stats line."""
    page.wait_for_function(
        """() => { const all = document.querySelectorAll('.message.assistant');
                   const last = all[all.length - 1];
                   return last && !last.hasAttribute('data-streaming'); }"""
    )
    answer = page.locator(".message.assistant").nth(index)
    return {
        "content": answer.locator(".content").inner_text(),
        "thinking": answer.locator(".thought").text_content(),
        "thinking_shown": answer.locator("details.thinking").is_visible(),
        "stats": answer.locator(".stats").inner_text(),
    }


def health(daemon: Daemon) -> dict[str, Any]:
    with httpx.Client(timeout=60, trust_env=False) as client:
        body: dict[str, Any] = client.get(daemon.url + "/health").json()
        return body


def generated_tokens(daemon: Daemon) -> float:
    with httpx.Client(timeout=60, trust_env=False) as client:
        text = client.get(daemon.url + "/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("localserve_generated_tokens_total")
    )


GROWTH_WATCH = """() => {
  window.growth = [];
  const list = document.getElementById('messages');
  new MutationObserver(() => {
    const last = list.querySelector('.message.assistant:last-child');
    if (!last || !last.hasAttribute('data-streaming')) return;
    const length = last.querySelector('.content').textContent.length;
    if (window.growth.at(-1) !== length) window.growth.push(length);
  }).observe(list, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_an_answer_streams_into_the_page_and_the_chat_survives_a_reload(
    page: Page, web_daemon: Daemon
) -> None:
    sent = force(page, options={"num_predict": 400}, format={"type": "string", "enum": [STREAMED]})
    page.locator("#model").select_option("tiny:latest")
    page.locator("#settings summary").click()
    page.locator("#temperature").fill("0.5")
    page.locator("#num-ctx").fill("1024")
    page.locator("#system").fill("You are terse.")
    page.locator("#system").blur()
    page.evaluate(GROWTH_WATCH)

    # Keyboard only: Shift+Enter is a new line, Enter sends.
    page.locator("#prompt").focus()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.locator("#prompt").input_value() == "first line\nsecond line"
    page.keyboard.press("Enter")
    answer = wait_for_answer(page)

    growth: list[int] = page.evaluate("window.growth")
    increases = sum(1 for a, b in zip([0, *growth], growth, strict=False) if b > a)
    assert increases >= 2, f"the answer did not grow while it streamed: {growth}"
    assert STREAMED in answer["content"]
    assert re.fullmatch(r"\d+ tokens · [\d.]+ tokens/s · first token \d+ ms", answer["stats"])
    assert not answer["thinking_shown"]
    body = sent[0]
    assert body["model"] == "tiny:latest" and body["stream"] is True
    assert body["options"] == {
        "temperature": 0.5,
        "num_ctx": 1024,
        "num_predict": 400,
    }
    assert body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first line\nsecond line"},
    ]
    assert page.locator(".conversations .open").all_inner_texts() == ["first line second line"]

    page.reload()
    page.wait_for_selector(".message.assistant")
    assert page.locator(".message.user").inner_text() == "first line\nsecond line"
    assert wait_for_answer(page)["content"] == answer["content"]
    assert page.locator("#temperature").input_value() == "0.5"

    # A second turn sends the history; rename and delete work from the keyboard too.
    page.locator(".conversations .rename").click()
    page.keyboard.press("Control+a")
    page.keyboard.type("Renamed <b>chat</b>")
    page.keyboard.press("Enter")
    assert page.locator(".conversations .open").all_inner_texts() == ["Renamed <b>chat</b>"]
    send(page, "and then?")
    wait_for_answer(page)
    assert [m["role"] for m in sent[1]["messages"]] == ["system", "user", "assistant", "user"]
    page.locator("#new-chat").click()
    assert page.locator(".conversations li").count() == 2
    page.locator(".conversations .delete").first.click()
    assert page.locator(".conversations .open").all_inner_texts() == ["Renamed <b>chat</b>"]


def test_stop_cancels_the_answer_on_the_daemon(page: Page, web_daemon: Daemon) -> None:
    # The whole context and no end-of-generation: without the stop this runs to 2048 tokens.
    force(page, options={"num_predict": 100_000, "ignore_eos": True})
    before = generated_tokens(web_daemon)
    send(page, "tell me everything")
    page.wait_for_function(
        "() => document.querySelector('.message.assistant .content').textContent.length > 0"
    )
    assert wait_until(lambda: health(web_daemon)["busy_slots"] == 1, timeout=60)
    assert page.locator("#stop").is_visible() and not page.locator("#send").is_visible()
    page.locator("#stop").click()

    answer = wait_for_answer(page)
    assert answer["stats"].endswith("stopped")
    assert page.locator("#send").is_visible()
    assert wait_until(lambda: health(web_daemon)["busy_slots"] == 0, timeout=60)
    # Freed by the stop, not by the end of the answer.
    assert generated_tokens(web_daemon) - before < 2000
    assert "stopped" in wait_for_answer(page)["stats"]


def test_models_switch_per_conversation_and_loaded_ones_are_shown(
    page: Page, web_daemon: Daemon
) -> None:
    sent = force(page, options={"num_predict": 4})
    names = page.locator("#model option").all_inner_texts()
    assert {"tiny:latest", "tiny-b:latest", "tiny-r1:latest"} <= set(names)
    page.locator("#model").select_option("tiny-b:latest")
    send(page, "hello")
    wait_for_answer(page)
    assert sent[-1]["model"] == "tiny-b:latest"
    page.wait_for_function("() => document.getElementById('loaded').textContent.includes('tiny-b')")

    page.locator("#new-chat").click()
    page.locator("#model").select_option("tiny:latest")
    send(page, "hi")
    wait_for_answer(page)
    assert sent[-1]["model"] == "tiny:latest"

    page.locator(".conversations .open", has_text="hello").click()
    assert page.locator("#model").input_value() == "tiny-b:latest"


def test_thinking_is_shown_folded(page: Page) -> None:
    force(page, options={"num_predict": 24})
    page.locator("#model").select_option("tiny-r1:latest")
    send(page, "think about it")
    answer = wait_for_answer(page)
    assert answer["thinking_shown"] and answer["thinking"]
    details = page.locator(".message.assistant details.thinking")
    assert details.get_attribute("open") is None
    assert not page.locator(".message.assistant .thought").is_visible()
    details.locator("summary").click()
    assert page.locator(".message.assistant .thought").is_visible()


def test_html_and_script_from_the_model_are_shown_as_text(page: Page) -> None:
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    force(page, format={"type": "string", "enum": [HOSTILE]})
    send(page, "say something nasty")
    answer = wait_for_answer(page)
    assert answer["content"] == f'"{HOSTILE}"'
    content = page.locator(".message.assistant .content")
    assert content.locator("img, script").count() == 0
    assert page.evaluate("window.pwned") is None
    # The renderer never even tried: the policy had nothing to block.
    assert not [line for line in console if "Content Security Policy" in line]


def test_markdown_is_rendered_from_nodes(page: Page, web_daemon: Daemon) -> None:
    title = "<img src=x onerror=window.pwned=3>"
    markdown = "\n".join(
        [
            "# Title",
            "Some **bold**, *italic*, `<code>` and [a link](https://example.com/x).",
            "[bad](javascript:alert(1)) <img src=x onerror=window.pwned=1>",
            "",
            "```python",
            "print('<script>window.pwned=2</script>')",
            "```",
            "- one",
            "- two",
            "1. first",
            "> quoted",
        ]
    )
    saved = {
        "conversations": [
            {
                "id": "c1",
                "title": title,
                "model": "tiny:latest",
                "system": "",
                "options": {},
                "messages": [
                    {"role": "user", "content": "<b>hi</b>"},
                    {"role": "assistant", "content": markdown, "thinking": ""},
                ],
            }
        ],
        "current": "c1",
    }
    page.evaluate("saved => localStorage.setItem('localserve.chat.v1', saved)", json.dumps(saved))
    open_page(page, web_daemon)
    content = page.locator(".message.assistant .content")
    assert content.locator("h3").inner_text() == "Title"
    assert content.locator("strong").inner_text() == "bold"
    assert content.locator("em").inner_text() == "italic"
    assert content.locator("p code").inner_text() == "<code>"
    link = content.locator("a")
    assert link.count() == 1 and link.get_attribute("href") == "https://example.com/x"
    assert link.get_attribute("rel") == "noopener noreferrer nofollow"
    assert "[bad](javascript:alert(1)) <img src=x onerror=window.pwned=1>" in content.inner_text()
    assert content.locator("pre code").inner_text() == "print('<script>window.pwned=2</script>')"
    assert content.locator("pre code").get_attribute("data-language") == "python"
    assert content.locator("ul li").all_inner_texts() == ["one", "two"]
    assert content.locator("ol li").all_inner_texts() == ["first"]
    assert content.locator("blockquote").inner_text() == "quoted"
    assert page.locator(".message.user").inner_text() == "<b>hi</b>"
    assert page.locator(".conversations .open").inner_text() == title
    assert page.locator("main img, main script, aside img").count() == 0
    assert page.evaluate("window.pwned") is None


def test_pull_shows_progress_and_adds_the_model(page: Page) -> None:
    page.locator("#pull-box summary").click()
    page.locator("#pull-name").fill(f"hf.co/{PULL_REPO}")
    page.locator("#pull-name").press("Enter")
    page.wait_for_function("() => document.getElementById('pull-status').textContent === 'success'")
    assert page.locator("#pull-progress").evaluate("bar => bar.value") == 1
    page.wait_for_function(
        "() => [...document.querySelectorAll('#model option')].some(o => o.value.includes('web'))"
    )
    page.locator("#pull-name").fill("hf.co/tester/absent-GGUF")
    page.locator("#pull").click()
    page.wait_for_function(
        "() => document.getElementById('pull-status').textContent.startsWith('Pull failed')"
    )


def test_phone_width(page: Page) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    assert page.locator("#menu").is_visible()
    assert not page.locator("#sidebar").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.locator("#menu").click()
    assert page.locator("#sidebar").is_visible()
    assert page.locator("#menu").get_attribute("aria-expanded") == "true"
    page.locator("#new-chat").click()
    assert not page.locator("#sidebar").is_visible()
    assert page.locator("#prompt").is_visible() and page.locator("#send").is_visible()


def test_with_an_api_key_the_page_asks_for_it_and_keeps_it_in_the_tab(
    browser: Browser, tmp_path: Path, tiny_gguf_path: Path
) -> None:
    env = {"LOCALSERVE_API_KEY": "s3cret-key"}
    with running_daemon(tmp_path / "keyed", tiny_gguf_path, env=env) as keyed:
        context = browser.new_context()
        context.set_default_timeout(WAIT_MS)
        try:
            tab = context.new_page()
            tab.goto(keyed.url + "/")
            tab.locator("#api-key").wait_for()
            assert tab.locator("#model option").count() == 0
            tab.locator("#api-key").fill("s3cret-key")
            tab.locator("#api-key").press("Enter")
            tab.wait_for_function("() => document.querySelectorAll('#model option').length > 0")
            assert not tab.locator("#key-form").is_visible()
            assert tab.evaluate("sessionStorage.getItem('localserve.apiKey')") == "s3cret-key"
            stored = tab.evaluate("JSON.stringify(localStorage)")
            assert "s3cret-key" not in stored
        finally:
            context.close()
