"""The web UI's files at ``/ui`` (``/`` redirects there): plain HTML, CSS and JavaScript modules
from the package (``cuvee/ui/static``), no build step, nothing fetched from any other host.

The files hold no data, so they need no key; everything the page shows comes from the same
``/v1`` routes any client uses, with the key the user gives the page. Every file goes out with
a Content-Security-Policy that allows scripts, styles and requests from this server only: model
output and document text are rendered as text by the page's own Markdown renderer, and even a
renderer bug could not load or run a script from anywhere else."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from cuvee.serve import errors

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated, so an upgrade of cuvee is seen at once
}
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


def assets() -> dict[str, bytes]:
    """Every file of the UI by its path under ``/ui/`` (read once: about 50 KB in all)."""
    root = resources.files("cuvee.ui") / "static"
    out: dict[str, bytes] = {}

    def walk(folder, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif any(entry.name.endswith(suffix) for suffix in TYPES):
                out[prefix + entry.name] = entry.read_bytes()

    walk(root, "")
    return out


def install_ui(app: FastAPI) -> None:
    files = assets()

    def answer(name: str) -> Response:
        data = files.get(name)
        if data is None:
            raise errors.APIError(404, f"The web UI has no file '{name}'.", code="not_found")
        suffix = name[name.rfind(".") :]
        return Response(data, media_type=TYPES[suffix], headers=HEADERS)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui", include_in_schema=False)
    async def ui_bare() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/ui/", include_in_schema=False)
    async def ui_index() -> Response:
        return answer("index.html")

    @app.get("/ui/{name:path}", include_in_schema=False)
    async def ui_file(name: str) -> Response:
        return answer(name)
