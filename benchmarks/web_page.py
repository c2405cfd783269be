"""The web chat page in a real browser: page weight, time to the first token painted
against a script's TTFT for the same request, and the README's screenshot.

    python benchmarks/web_page.py [--model gemma|tiny] [--reps 5] [--tokens 32]
                                  [--screenshot docs/img/web-chat.png]

A daemon on a free port serves Gemma 3 270M Q4_K_M (from its PyPI package; ``tiny``
is the random-weight test model); Debian's chromium (/usr/bin/chromium), driven by
Playwright, opens the page.

- Page weight: every response of a first load in a fresh browser profile, bytes on the
  wire (headers and body) from the browser's network events, the page's own files
  apart from the API calls the page makes at start.
- First token: the page's time from the Enter key to the frame that shows the first
  token (a capture listener and a MutationObserver in the page, then one animation
  frame: the paint), against the TTFT of the same request (same model, prompt length,
  options) streamed by httpx: time to the first line with text. Each round sends one
  of each, in alternating order, with prompts of the same length no request has used
  before (so neither gets the other's prompt cache). Medians, and their ratio.
- Screenshot: one answer in the page, at 1280x800, saved to ``--screenshot``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Page, Request, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.daemon import Daemon, add_model, start_daemon, stop_daemon
from tests.support.tiny_gguf import gemma_path, write_tiny_gguf

SCREENSHOT_PROMPT = "Why is the sky blue?"
# Measures in the page, from the Enter key to the frame that shows the answer's first
# text; leaves the milliseconds in window.firstPaint.
FIRST_PAINT = """() => {
  window.firstPaint = null;
  const list = document.getElementById('messages');
  let pressed = null;
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && pressed === null) pressed = performance.now();
  }, {capture: true});
  const watch = new MutationObserver(() => {
    const last = list.querySelector('.message.assistant:last-child');
    if (pressed === null || !last) return;
    const text = last.querySelector('.content').textContent;
    const thought = last.querySelector('.thought').textContent;
    if (!text && !thought) return;
    watch.disconnect();
    requestAnimationFrame(() => { window.firstPaint = performance.now() - pressed; });
  });
  watch.observe(list, {subtree: true, childList: true, characterData: true});
}"""


def prompt(index: int, side: str) -> str:
    # Same length for every index and side, and a prefix no earlier request shared.
    return f"{side}{index:03d} In two sentences, why is the sky blue?"


def page_weight(browser: Browser, daemon: Daemon) -> dict[str, int]:
    context = browser.new_context()
    try:
        page = context.new_page()
        requests: list[Request] = []
        # A bound method will not do: Playwright tags the handler it is given.
        page.on("requestfinished", lambda request: requests.append(request))  # noqa: PLW0108
        page.goto(daemon.url + "/")
        page.wait_for_function("() => document.querySelectorAll('#model option').length > 0")
        page.wait_for_load_state("networkidle")
        files = api = 0
        for request in requests:
            sizes = request.sizes()
            size = sizes["responseHeadersSize"] + sizes["responseBodySize"]
            if request.url.startswith(daemon.url + "/api/"):
                api += size
            else:
                files += size
        return {"files_bytes": files, "api_bytes": api, "requests": len(requests)}
    finally:
        context.close()


def page_first_token(page: Page, text: str) -> float:
    page.locator("#new-chat").click()
    page.evaluate(FIRST_PAINT)
    page.locator("#prompt").fill(text)
    page.locator("#prompt").press("Enter")
    page.wait_for_function("() => window.firstPaint !== null", timeout=300_000)
    painted = float(page.evaluate("() => window.firstPaint"))
    page.wait_for_function(
        "() => !document.querySelector('.message.assistant:last-child[data-streaming]')",
        timeout=300_000,
    )
    return painted


def script_ttft(client: httpx.Client, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    first = None
    with client.stream("POST", "/api/chat", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            message = json.loads(line).get("message", {}) if line else {}
            if first is None and (message.get("content") or message.get("thinking")):
                first = time.perf_counter()
    assert first is not None, "no token in the answer"
    return (first - started) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gemma", "tiny"], default="gemma")
    parser.add_argument("--reps", type=int, default=5, help="rounds of each measure (5)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per timed answer (32)")
    parser.add_argument("--screenshot", type=Path, default=Path("docs/img/web-chat.png"))
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"no browser: install chromium ({CHROMIUM} is missing)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="web-bench-") as folder:
        work = Path(folder)
        if args.model == "gemma":
            args.name = "gemma3:270m"
            add_model(work / "home", gemma_path(), args.name)
        else:
            args.name = "tiny:latest"
            add_model(work / "home", write_tiny_gguf(work / "tiny.gguf"), args.name)
        daemon = start_daemon(work / "home")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
                )
                try:
                    run(browser, daemon, args)
                finally:
                    browser.close()
        finally:
            stop_daemon(daemon, check=False)
    return 0


def run(browser: Browser, daemon: Daemon, args: argparse.Namespace) -> None:
    weight = page_weight(browser, daemon)
    print(
        f"page weight, first load: {weight['files_bytes']:,} bytes for the page's files, "
        f"{weight['api_bytes']:,} bytes of API answers, {weight['requests']} requests"
    )

    options = {"num_predict": args.tokens, "temperature": 0}
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    client = httpx.Client(base_url=daemon.url, timeout=300, trust_env=False)
    try:
        page = context.new_page()
        page.set_default_timeout(300_000)

        # The page sends the options the script sends (the chat settings hold none), and
        # a cap on the screenshot's answer: a small model may ramble to the context's end.
        sent = dict(options)

        def same_options(route: Any, request: Any) -> None:
            body = json.loads(request.post_data)
            route.continue_(post_data=json.dumps({**body, "options": {**body["options"], **sent}}))

        page.route("**/api/chat", same_options)
        page.goto(daemon.url + "/")
        page.wait_for_function("() => document.querySelectorAll('#model option').length > 0")
        # Load the model first: the timings are of a resident model.
        warm = {
            "model": args.name,
            "messages": [{"role": "user", "content": "hi"}],
            "options": options,
        }
        script_ttft(client, warm)

        in_page: list[float] = []
        by_script: list[float] = []
        for index in range(args.reps):
            body = {
                "model": args.name,
                "messages": [{"role": "user", "content": prompt(index, "s")}],
                "options": options,
            }
            if index % 2:
                by_script.append(script_ttft(client, body))
                in_page.append(page_first_token(page, prompt(index, "p")))
            else:
                in_page.append(page_first_token(page, prompt(index, "p")))
                by_script.append(script_ttft(client, body))
        painted, streamed = statistics.median(in_page), statistics.median(by_script)
        print(
            f"first token: Enter to painted {painted:.0f} ms (median of {args.reps}), "
            f"script TTFT {streamed:.0f} ms, ratio {painted / streamed:.2f}"
        )
        print(f"  page {[round(v) for v in in_page]}  script {[round(v) for v in by_script]}")

        sent.clear()
        sent["num_predict"] = 400
        # The screenshot starts from a clean list: only the conversation it shows.
        page.evaluate("() => localStorage.clear()")
        page.reload()
        page.wait_for_function("() => document.querySelectorAll('#model option').length > 0")
        page.locator("#settings summary").click()
        page.locator("#temperature").fill("0")
        page.locator("#temperature").blur()
        page.locator("#prompt").fill(SCREENSHOT_PROMPT)
        page.locator("#prompt").press("Enter")
        page.wait_for_function(
            "() => !document.querySelector('.message.assistant:last-child[data-streaming]')",
            timeout=600_000,
        )
        page.locator("#settings summary").click()
        page.locator("#prompt").focus()
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.screenshot))
        print(f"screenshot: {args.screenshot}")
    finally:
        client.close()
        context.close()


if __name__ == "__main__":
    sys.exit(main())
