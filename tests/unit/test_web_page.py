"""The web chat page's files and headers, in-process (server/routes/web.py, server/web/).
tests/e2e/test_web_page.py drives the page in a real browser."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from localserve.config import Settings
from localserve.server.app import create_app
from localserve.server.routes import web

BROWSER_HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def get(path: str, settings: Settings | None = None, **headers: str) -> httpx.Response:
    app = create_app(settings or Settings())

    async def run() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1:11435"
            ) as client:
                # if_none_match=... is the If-None-Match header.
                named = {key.replace("_", "-"): value for key, value in headers.items()}
                return await client.get(path, headers=named)

    return asyncio.run(run())


def assert_page_headers(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == web.CSP
    assert "script-src 'self'" in web.CSP and "unsafe-inline" not in web.CSP
    assert "frame-ancestors 'none'" in web.CSP and "connect-src 'self'" in web.CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["etag"] and response.headers["cache-control"] == "no-cache"


def test_a_browser_gets_the_page_and_scripts_get_the_plain_text() -> None:
    page = get("/", accept=BROWSER_HTML)
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>localserve</title>" in page.text
    assert_page_headers(page)
    for accept in ("*/*", "application/json", ""):
        plain = get("/", accept=accept)
        assert plain.text == "localserve is running"
        assert plain.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize(
    ("name", "kind"),
    [("app.js", "text/javascript"), ("markdown.js", "text/javascript"), ("style.css", "text/css")],
)
def test_assets_have_types_security_headers_and_revalidate(name: str, kind: str) -> None:
    first = get(f"/web/{name}")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith(kind)
    assert_page_headers(first)
    again = get(f"/web/{name}", if_none_match=first.headers["etag"])
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "path",
    ["/web/nope.js", "/web/..%2Fapp.py", "/web/%2E%2E", "/web/.hidden.js", "/web/APP.JS", "/web/"],
)
def test_nothing_but_the_page_files_is_served(path: str) -> None:
    response = get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "error" in response.json()


def test_every_file_the_page_names_exists_and_is_local() -> None:
    page = get("/", accept=BROWSER_HTML).text
    named = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert set(named) == {"data:,", "/web/style.css", "/web/app.js"}
    for path in named[1:]:
        assert get(path).status_code == 200
    assert re.findall(r'from "([^"]+)"', get("/web/app.js").text) == ["/web/markdown.js"]


def test_scripts_never_parse_text_as_html() -> None:
    # The rule that keeps model output inert, checked where it could break: no sink that
    # parses a string as HTML or code in any script of the page.
    sinks = re.compile(
        r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|Function\("
    )
    for name in ("app.js", "markdown.js"):
        assert not sinks.search(get(f"/web/{name}").text), name


def test_with_an_api_key_the_page_loads_but_the_api_needs_the_key() -> None:
    settings = Settings(api_key=SecretStr("s3cret"))
    assert get("/", settings, accept=BROWSER_HTML).status_code == 200
    assert get("/web/app.js", settings).status_code == 200
    assert get("/api/tags", settings).status_code == 401
    assert get("/web/nope.js", settings).status_code == 404


def test_the_page_is_package_data() -> None:
    text = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert '"localserve.server" = ["web/*.html", "web/*.js", "web/*.css"]' in text
    assert set(web.assets()) == {"index.html", "app.js", "markdown.js", "style.css"}
