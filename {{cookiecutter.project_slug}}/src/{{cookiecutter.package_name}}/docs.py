"""The API docs, served whole by the service: Swagger UI at /docs, ReDoc at /redoc.

FastAPI's own pages load their JavaScript and CSS from a CDN: without internet (an air-gapped
network, a proxy that lets through only this service) they are blank, and every visit tells the
CDN who reads the docs. These are the same pages (FastAPI's `get_swagger_ui_html` and
`get_redoc_html`) with every asset served from here, under `/docs/assets/`: Swagger UI's and
ReDoc's builds as the `fastapi-offline` package ships them (pinned in `pyproject.toml`, so
`pip-audit` and dependency updates see them like any other dependency).

`create_app` installs them only with `APP_DOCS` (on in development, off in production).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

OPENAPI_URL = "/openapi.json"
SWAGGER_UI_URL = "/docs"
REDOC_URL = "/redoc"
# Where Swagger UI's Authorize sends the browser back after an OAuth2 redirect flow.
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"
# The package and the folder in it that hold swagger-ui-bundle.js, swagger-ui.css,
# redoc.standalone.js and favicon.png.
ASSETS_PACKAGE = ("fastapi_offline", "static")
# The browser loads, connects to and runs nothing from another origin on these pages, whatever
# the bundles try: ReDoc's sidebar, for one, shows a logo from cdn.redoc.ly (the image is left
# out and the text link stays). Inline scripts and styles are allowed: Swagger UI's settings
# are an inline script, ReDoc writes its styles inline, and the pages show no user's input.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def install_docs(app: FastAPI) -> None:
    """Add /docs, /redoc, the OAuth2 redirect page and their assets to `app`.

    `app` must serve its OpenAPI document at `OPENAPI_URL`, and must not have FastAPI's own docs
    (`docs_url=None, redoc_url=None`).
    """
    # Fails at startup, not on the first visit, if the package or its folder is missing.
    app.mount(ASSETS_URL, StaticFiles(packages=[ASSETS_PACKAGE]), name="docs-assets")

    @app.get(SWAGGER_UI_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = root_path(request)
        page = get_swagger_ui_html(
            openapi_url=root + OPENAPI_URL,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL,
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            # Never hand the document to swagger.io's online validator.
            swagger_ui_parameters={"validatorUrl": None},
        )
        return same_origin_only(page)

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return same_origin_only(get_swagger_ui_oauth2_redirect_html())  # an inline script only

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = root_path(request)
        page = get_redoc_html(
            openapi_url=root + OPENAPI_URL,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,  # fonts from Google are a CDN too
        )
        return same_origin_only(page)


def same_origin_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return page


def root_path(request: Request) -> str:
    """The prefix a proxy serves the app under (uvicorn's `--root-path`), as FastAPI's own docs
    use it: the browser must ask for `/prefix/openapi.json`, not `/openapi.json`."""
    return str(request.scope.get("root_path", "")).rstrip("/")
