"""The dashboard at /dashboard: what a person running Kairos wants to look at.

    views.py    what each page shows, read from the engine, push, models, experiments
    routes.py   the pages (server-rendered, Jinja2), the live sample, the sign-in
    templates/  one template per page; static/ the chart code, uPlot vendored
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from kairos.dashboard.routes import COOKIE, HERE, dashboard_router


def mount_dashboard(app: FastAPI, reports_dir: Path) -> None:
    app.include_router(dashboard_router(reports_dir))
    app.mount("/dashboard/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")


__all__ = ["COOKIE", "mount_dashboard"]
