"""``/api/v1/docs``: Swagger UI served from a Python package, so the docs work offline.

FastAPI's default page loads Swagger UI's JavaScript and CSS from a CDN, which a server without
internet access (the usual place for an inference platform) cannot reach. The assets come from the
``swagger-ui-bundle-v2`` wheel instead (Swagger UI 5, which renders OpenAPI 3.1).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_URL = "/api/v1/docs"
ASSETS_URL = f"{DOCS_URL}/assets"


def install_offline_docs(app: FastAPI, openapi_url: str) -> None:
    app.mount(ASSETS_URL, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} — docs",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png")
