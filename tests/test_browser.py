"""The baked service's /docs and /redoc in a real browser, with every other host unreachable.

A default bake, for this machine's Python, serves itself (`python -m <package> serve`, a
throwaway redis-server, a user made with `create-user`), and Debian's headless chromium, driven
by Playwright, opens the pages. Every request to a host other than the service is aborted and
recorded, and there must be none: the pages must render, and Swagger UI's Authorize (the
password flow) and "Try it out" on `GET /me` must work, from the service alone. Playwright runs
the system's chromium (`make system-tools` installs it); it never downloads a browser of its own.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from .baking import HOST_PYTHON, bake, clean_environment, install_into, load_generated_module

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium")
# Root needs --no-sandbox; the rest keep chromium from calling home (updates, sync, first run)
# and from needing a GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
]
# Generous: two shared cores may be busy with other suites. Playwright waits for each condition
# and moves on as soon as it holds, so a large bound costs nothing when all is well.
TIMEOUT_MS = 90_000
START_SECONDS = 60
USER, PASSWORD = "alice", "correct horse battery staple"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, bake_venv: Path) -> Path:
    project = bake(tmp_path_factory.mktemp("browser"), python_version=HOST_PYTHON)
    install_into(bake_venv, project)
    return project


@pytest.fixture
def service(project: Path, bake_venv: Path, tmp_path: Path) -> Iterator[str]:
    """The bake's `serve`, as `make run` starts it (its `.env`, development), on a free port with
    a throwaway Redis and one user; yields its base URL."""
    helper: Any = load_generated_module(project, "tests/redis_server.py", "generated_redis_server")
    redis = helper.RedisServer()
    redis.start()
    port = helper.free_port()
    python = str(bake_venv / "bin" / "python")
    package = project.name.replace("-", "_")
    environment = clean_environment(
        APP_REDIS_URL=redis.url, APP_PORT=str(port), APP_USERS_FILE=str(tmp_path / "users.json")
    )
    log = (tmp_path / "serve.log").open("w")
    process = None
    try:
        create = [python, "-m", package, "create-user", USER, "--scopes", "read write"]
        subprocess.run(
            create, input=PASSWORD + "\n", cwd=project, env=environment, text=True, check=True
        )
        process = subprocess.Popen(
            [python, "-m", package, "serve"],
            cwd=project,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base_url = f"http://127.0.0.1:{port}"
        wait_until_live(process, base_url, tmp_path / "serve.log")
        yield base_url
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
        log.close()
        redis.close()


def wait_until_live(process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        assert process.poll() is None, log.read_text()
        try:
            httpx.get(f"{base_url}/health/live", timeout=1)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the service did not start:\n" + log.read_text()
            time.sleep(0.1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.fail("chromium is missing: make system-tools (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class OffSite:
    """Aborts every request to a host other than the service's, and records it."""

    def __init__(self, base_url: str) -> None:
        self.host = urlsplit(base_url).netloc
        self.requests: list[str] = []

    def __call__(self, route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == self.host:
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()


def open_page(browser: Browser, base_url: str) -> tuple[Page, OffSite, list[str]]:
    """A fresh page that reaches the service only; returns it, the aborted requests and the
    page's uncaught script errors."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    off_site = OffSite(base_url)
    context.route("**/*", off_site)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, off_site, errors


def test_swagger_ui_renders_and_logs_in_from_the_service_alone(
    service: str, browser: Browser, tmp_path: Path
) -> None:
    page, off_site, errors = open_page(browser, service)
    screenshot = tmp_path / "docs.png"
    try:
        page.goto(f"{service}/docs")  # returns once the page and its scripts have loaded
        assert off_site.requests == []
        me = page.locator(".opblock").filter(
            has=page.locator('.opblock-summary-path[data-path="/me"]')
        )
        expect(me).to_be_visible(timeout=TIMEOUT_MS)

        # Authorize: the OAuth2 password flow against the app's token URL.
        page.get_by_role("button", name="Authorize").first.click()
        dialog = page.locator(".modal-ux")
        dialog.get_by_label("username:").fill(USER)
        dialog.get_by_label("password:").fill(PASSWORD)
        dialog.get_by_role("button", name="Apply given OAuth2 credentials").click()
        expect(dialog.get_by_role("heading", name="Authorized")).to_be_visible(timeout=TIMEOUT_MS)
        dialog.get_by_role("button", name="Close").click()

        # Try it out: GET /me with the token Authorize got.
        me.locator(".opblock-summary").click()
        me.get_by_role("button", name="Try it out").click()
        me.get_by_role("button", name="Execute").click()
        answer = me.locator(".live-responses-table tbody")
        expect(answer.locator(".response-col_status")).to_have_text("200", timeout=TIMEOUT_MS)
        expect(answer.locator(".response-col_description")).to_contain_text(
            f'"sub": "{USER}"', timeout=TIMEOUT_MS
        )
    finally:
        page.screenshot(path=screenshot, full_page=True)  # what a person saw, pass or fail
        print(f"\n/docs screenshot: {screenshot}")
    assert off_site.requests == []
    assert errors == []


def test_redoc_renders_from_the_service_alone(service: str, browser: Browser) -> None:
    page, off_site, errors = open_page(browser, service)
    page.goto(f"{service}/redoc")
    assert off_site.requests == []
    expect(page.get_by_role("heading", name="Auth Service", level=1)).to_be_visible(
        timeout=TIMEOUT_MS
    )
    expect(page.get_by_role("heading", name="Me", level=2)).to_be_visible(timeout=TIMEOUT_MS)
    assert off_site.requests == []
    assert errors == []
