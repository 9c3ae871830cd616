"""/docs and /redoc load nothing from elsewhere, and `APP_DOCS=false` removes them.

Every URL the pages name (each `src` and `href`, ReDoc's `spec-url`, and the URLs in Swagger
UI's configuration script) must be a path on this service, and each one must be served with a
fitting content type. The browser test of the template (its `tests/test_browser.py`) then shows
the pages render and log in with the network to anything else blocked.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from {{ cookiecutter.package_name }}.main import create_app
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import make_settings, running

pytestmark = pytest.mark.anyio

DOC_PAGES = ("/docs", "/redoc")
# Everything the docs add: without APP_DOCS, none of it may answer.
DOC_PATHS = (
    *DOC_PAGES,
    "/openapi.json",
    "/docs/oauth2-redirect",
    "/docs/assets/swagger-ui-bundle.js",
    "/docs/assets/swagger-ui.css",
    "/docs/assets/redoc.standalone.js",
    "/docs/assets/favicon.png",
)
CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".json": "application/json",
}
URL_ATTRIBUTES = {"src", "href", "spec-url"}
# In inline scripts (Swagger UI's configuration), every string literal with a slash in it:
# `url: '/openapi.json'`, `oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'`.
SCRIPT_URLS = re.compile(r"""(['"])([^'"]*/[^'"]*)\1""")


class Urls(HTMLParser):
    """Collects every URL-valued attribute of a page, and the text of its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in URL_ATTRIBUTES and value]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.scripts.append(data)


def urls_in(page: str) -> list[str]:
    parser = Urls()
    parser.feed(page)
    in_scripts = [match[2] for script in parser.scripts for match in SCRIPT_URLS.finditer(script)]
    return parser.urls + in_scripts


def is_own_path(url: str, root: str = "") -> bool:
    """A path on this service: no scheme, no host (`//cdn...` is another host too)."""
    return url.startswith(root + "/") and not url.startswith("//") and ":" not in url


def docs_settings(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path, **overrides: Any
) -> Settings:
    return make_settings(redis_url, key_files, users_file=tmp_path / "users.json", **overrides)


@pytest.mark.parametrize(
    ("environment", "docs", "served"),
    [
        ("development", None, True),
        ("production", None, False),
        ("development", False, False),
        ("production", True, True),
    ],
)
def test_docs_are_on_in_development_and_off_in_production_unless_app_docs_says(
    redis_url: str,
    key_files: dict[str, Path],
    tmp_path: Path,
    environment: str,
    docs: bool | None,
    served: bool,
) -> None:
    overrides: dict[str, Any] = {"environment": environment}
    if docs is not None:
        overrides["docs"] = docs
    settings = docs_settings(redis_url, key_files, tmp_path, **overrides)
    assert settings.serves_docs is served


@pytest.mark.parametrize("overrides", [{"docs": False}, {"environment": "production"}])
async def test_without_app_docs_nothing_of_the_docs_answers(
    redis_url: str, key_files: dict[str, Path], tmp_path: Path, overrides: dict[str, Any]
) -> None:
    settings = docs_settings(redis_url, key_files, tmp_path, **overrides)
    async with running(create_app(settings)) as client:
        statuses = {path: (await client.get(path)).status_code for path in DOC_PATHS}
        live = (await client.get("/health/live")).status_code
    assert statuses == dict.fromkeys(DOC_PATHS, 404)
    assert live == 200  # the rest of the service is there


@pytest.mark.parametrize("page", DOC_PAGES)
async def test_doc_pages_load_every_asset_from_the_service(
    client: httpx.AsyncClient, page: str
) -> None:
    response = await client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    urls = urls_in(response.text)
    assert "/openapi.json" in urls
    assert [url for url in urls if not is_own_path(url)] == []
    if page == "/docs":  # Authorize comes back to this page after an OAuth2 redirect flow
        assert "/docs/oauth2-redirect" in urls
    for url in urls:
        answer = await client.get(url)
        assert answer.status_code == 200, url
        expected = CONTENT_TYPES.get(Path(url).suffix, "text/html")
        assert answer.headers["content-type"].startswith(expected), url
        assert answer.content, url


# What a Content-Security-Policy of the docs may allow: no source names a host.
LOCAL_SOURCES = {"'self'", "'none'", "'unsafe-inline'", "data:", "blob:"}


@pytest.mark.parametrize("page", [*DOC_PAGES, "/docs/oauth2-redirect"])
async def test_doc_pages_forbid_the_browser_other_origins(
    client: httpx.AsyncClient, page: str
) -> None:
    """Whatever the bundled scripts try (ReDoc fetches a logo from its CDN), the browser loads,
    connects to and runs nothing from another origin on these pages."""
    policy = (await client.get(page)).headers["content-security-policy"]
    directives = {
        name: sources for name, *sources in (directive.split() for directive in policy.split(";"))
    }
    assert directives["default-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]  # no other site frames the Authorize form
    allowed = {source for sources in directives.values() for source in sources}
    assert allowed <= LOCAL_SOURCES


async def test_doc_pages_follow_a_proxy_prefix(settings: Settings) -> None:
    """Behind a proxy that serves the app under /api (uvicorn --root-path), the browser must
    ask for /api/... ."""
    transport = httpx.ASGITransport(app=create_app(settings), root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for page in DOC_PAGES:
            urls = urls_in((await client.get(page)).text)
            assert urls
            assert [url for url in urls if not is_own_path(url, root="/api")] == []
