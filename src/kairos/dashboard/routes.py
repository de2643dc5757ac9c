"""/dashboard: server-rendered pages over the running service, a little JavaScript for
the live chart (uPlot, vendored in static/vendor: nothing is fetched from the internet).

Behind the `admin` key when keys are on. A browser cannot send a Bearer header on a
page load, so /dashboard/login takes the key once and keeps it in an HttpOnly,
SameSite=Strict cookie that only /dashboard paths accept (api/auth/middleware.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from fastapi.templating import Jinja2Templates

from kairos.dashboard import views
from kairos.errors import NotFound

HERE = Path(__file__).parent
COOKIE = "kairos_dashboard_key"
templates = Jinja2Templates(directory=str(HERE / "templates"))
PAGES = [("overview", "/dashboard"), ("users", "/dashboard/users"), ("models", "/dashboard/models"),
         ("push", "/dashboard/push"), ("experiments", "/dashboard/experiments")]


def _page(request: Request, template: str, page: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, template, {"pages": PAGES, "page": page, **context})


def dashboard_router(reports_dir: Path) -> APIRouter:
    """`reports_dir`: where `kairos evaluate --out` folders are looked for (models page)."""
    router = APIRouter(prefix="/dashboard", include_in_schema=False)

    @router.get("", response_class=HTMLResponse)
    async def overview(request: Request) -> HTMLResponse:
        state = request.app.state
        data = await run_in_threadpool(views.overview, state.engine, state.push, state.lease.held)
        return _page(request, "overview.html", "overview", **data)

    @router.get("/live.json")
    async def live(request: Request) -> dict[str, Any]:
        return views.live(request.app.state.engine, request.app.state.metrics.times)

    @router.get("/users", response_class=HTMLResponse)
    async def user(request: Request, user_id: Annotated[str | None, Query(max_length=256)] = None) -> HTMLResponse:
        state = request.app.state
        if not user_id:
            return _page(request, "user.html", "users", user_id=None)
        try:
            data = await run_in_threadpool(views.user_page, state.engine, state.push, state.ids, user_id)
        except NotFound:
            return _page(request, "user.html", "users", user_id=user_id, missing=True)
        return _page(request, "user.html", "users", **data)

    @router.get("/models", response_class=HTMLResponse)
    async def models(request: Request) -> HTMLResponse:
        state = request.app.state
        data = await run_in_threadpool(views.models_page, state.models, state.engine, reports_dir)
        return _page(request, "models.html", "models", **data)

    @router.get("/reports/{name}/{plot}")
    async def report_plot(name: str, plot: str) -> Response:
        # One level below reports_dir, a PNG by its plain name: no other file is reachable.
        path = reports_dir / name / plot
        if "/" in name or name.startswith(".") or not plot.endswith(".png") or "/" in plot or not path.is_file():
            return JSONResponse({"error": {"code": "not_found", "message": "no such plot"}}, status_code=404)
        return FileResponse(path, media_type="image/png")

    @router.get("/push", response_class=HTMLResponse)
    async def push(request: Request) -> HTMLResponse:
        service = request.app.state.push
        if service is None:
            return _page(request, "push.html", "push", off=True)
        return _page(request, "push.html", "push", **await run_in_threadpool(views.push_page, service))

    @router.get("/experiments", response_class=HTMLResponse)
    async def experiments(request: Request) -> HTMLResponse:
        data = await run_in_threadpool(views.experiments_page, request.app.state.experiments)
        return _page(request, "experiments.html", "experiments", **data)

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, failed: bool = False) -> HTMLResponse:
        return _page(request, "login.html", "login", failed=failed)

    @router.post("/login")
    async def login(request: Request) -> Response:
        # The form's one field, urlencoded (the stdlib reads it: no multipart parser needed).
        body = (await request.body())[:4096].decode("utf-8", "replace")
        key = (parse_qs(body).get("key") or [""])[0]
        if not key or not request.app.state.authenticator.admits(key, "admin"):
            return RedirectResponse("/dashboard/login?failed=true", status_code=303)
        response = RedirectResponse("/dashboard", status_code=303)
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/dashboard",
                            secure=request.url.scheme == "https")
        return response

    return router
