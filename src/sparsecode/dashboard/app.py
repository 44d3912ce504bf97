"""The dashboard: a small FastAPI app over RUN/features.sqlite, server-rendered with Jinja2.

    /features            feature list: sort, filter dead/dense, search by id or token text   (+ /features.json)
    /features/{id}       one feature: stats, histogram, contexts, promoted/suppressed tokens  (+ /features/{id}.json)
                         its ablation effect (RUN/ablation.json) and, with ?prompt=..&strength=.., a steering box
                         result (loads the model)
    /fires?text=...      which features fire on each token of a text (loads the model)       (+ /fires.json)
    /attribution         the attribution graph `sparsecode attribute` wrote to RUN/attribution (+ .json, .png)
    /meta.json           what the database was built from

Browsing needs only sqlite3, FastAPI and Jinja2; torch is imported by /fires alone, on first use. Requests
never name files: the database path is fixed when the app is created and static files come from the
package's own folder through Starlette's StaticFiles (which refuses paths leading outside it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException

from ..layout import ATTRIBUTION_DIR, CONFIG_FILE, FEATURES_FILE
from .db import FEATURE_ID, FILTERS, IMAGE_WORLDS, SORTS, FeatureDB
from .fires import FiresModel
from .guard import Guard

HERE = Path(__file__).parent
MAX_PER_PAGE = 500
MAX_TEXT_CHARS = 2000


def _templates() -> Environment:
    env = Environment(
        loader=PackageLoader("sparsecode.dashboard", "templates"),
        autoescape=select_autoescape(["html"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tok"] = lambda t: t.replace("\n", "↵").replace("\t", "⇥") if t else "∅"
    env.filters["pct"] = lambda x: "—" if x is None else f"{100 * x:.3g}%"
    env.filters["num"] = lambda x, d=3: (
        "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{d}g}"
    )
    # density bar: log scale from 1e-5 (empty) to 1 (full), since densities span orders of magnitude
    env.filters["logbar"] = lambda d: 0.0 if not d else round(min(max((math.log10(d) + 5) / 5, 0.0), 1.0) * 100, 1)
    env.filters["shade"] = lambda a, top: 0.0 if not a or not top else round(min(max(a / top, 0.0), 1.0), 3)
    return env


def _parse_feature_id(raw: str, db: FeatureDB) -> int:
    """400 for anything but a plain decimal number, 404 for a number that is not a feature."""
    if not FEATURE_ID.fullmatch(raw):
        raise HTTPException(400, f"malformed feature id {raw[:40]!r}: expected a whole number")
    fid = int(raw)
    if fid >= db.n_latents:
        raise HTTPException(404, f"no feature {fid}: this dictionary has features 0 to {db.n_latents - 1}")
    return fid


def _choice(params: dict[str, str], name: str, choices, default: str) -> str:
    value = params.get(name, default) or default
    if value not in choices:
        raise HTTPException(400, f"{name} must be one of {', '.join(choices)}, got {value[:40]!r}")
    return value


def _positive(params: dict[str, str], name: str, default: int, maximum: int) -> int:
    raw = params.get(name, "") or str(default)
    if not FEATURE_ID.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise HTTPException(400, f"{name} must be a whole number from 1 to {maximum}, got {raw[:40]!r}")
    return int(raw)


def _ablation(run_dir: Path, fid: int) -> dict[str, Any] | None:
    """Feature ``fid``'s row of RUN/ablation.json (written by `sparsecode ablate`), or None."""
    try:
        result = json.loads((Path(run_dir) / "ablation.json").read_text())
        return next((r for r in result["features"] if r.get("feature") == fid), None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _site_name(run_dir: Path) -> str | None:
    """The run's site in an attribution graph: its hook (a transcoder's: its target hook), from RUN/config.json."""
    try:
        source = json.loads((run_dir / CONFIG_FILE).read_text())["source"]
        return source.get("target_hook") or source.get("hook")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _attribution(run_dir: Path, site: str | None) -> dict[str, Any]:
    """The graph in RUN/attribution/attribution.json (``graph`` None when there is none), its nodes marked with
    whether they are features of this run (the graph may span several runs: nodes belong to sites)."""
    path = Path(run_dir) / ATTRIBUTION_DIR / "attribution.json"
    try:
        graph = json.loads(path.read_text())
        nodes, edges = graph["nodes"], graph["edges"]
    except FileNotFoundError:
        graph = None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HTTPException(500, f"{path.name} is unreadable ({type(e).__name__}); write it again with attribute")
    if graph is not None:
        for item in nodes:
            item["here"] = item.get("site") == site
        for item in edges:
            item["source_here"], item["target_here"] = item.get("source_site") == site, item.get("target_site") == site
        graph["edges"] = sorted(edges, key=lambda e: -abs(e.get("weight", 0.0)))
    how = f"sparsecode attribute {run_dir} [MORE_RUNS ...] --prompt 'The capital of France is' --target ' Paris'"
    return {"graph": graph, "has_picture": (path.parent / "attribution.png").is_file(), "how": how}


def _text_only(tool: str, meta: dict[str, Any]) -> str:
    """Why a text-only tool is not offered on an image run."""
    return (
        f"{tool} needs a text model, and this run was trained on {IMAGE_WORLDS[meta['world']]}; its features' pages "
        "show the image regions they fire on (/features)"
    )


def create_app(run_dir: str | Path, allowed_hosts: Iterable[str] | None = None) -> FastAPI:
    """The dashboard for the run in ``run_dir`` (its features.sqlite must exist). Requests whose Host header is not
    one of ``allowed_hosts`` get 400 (None: any Host; the server passes its loopback names, see ``guard``)."""
    run_dir = Path(run_dir)
    db = FeatureDB(run_dir / FEATURES_FILE)
    env = _templates()
    fires_model = FiresModel(run_dir)
    site = _site_name(run_dir)
    counts = db.list_features(filter="dead", limit=1)[0], db.list_features(filter="dense", limit=1)[0]
    app = FastAPI(title="sparsecode dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, allowed_hosts=allowed_hosts)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.state.db = db

    image_run = db.image_run

    def page(name: str, request: Request, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(
            meta=db.meta,
            run_name=run_dir.resolve().name,
            counts=counts,
            path=request.url.path,
            image_run=image_run,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.endswith(".json"):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return page("error.html", request, status=exc.status_code, status_code=exc.status_code, message=exc.detail)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        return await http_error(request, HTTPException(400, "malformed request"))

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/features")

    def feature_list(request: Request) -> dict[str, Any]:
        params = dict(request.query_params)
        query = params.get("q", "")[:100]
        token_query = bool(query.strip()) and not FEATURE_ID.fullmatch(query.strip())
        sort = _choice(
            params,
            "sort",
            tuple(SORTS) if token_query else tuple(k for k in SORTS if k != "match"),
            "match" if token_query else "max_act",
        )
        order = _choice(params, "order", ("asc", "desc"), "desc")
        filt = _choice(params, "filter", FILTERS, "all")
        per_page = _positive(params, "per_page", 100, MAX_PER_PAGE)
        page_no = _positive(params, "page", 1, 10**9)
        total, rows = db.list_features(sort, order, filt, query, (page_no - 1) * per_page, per_page)
        return {
            "total": total,
            "page": page_no,
            "per_page": per_page,
            "pages": max(1, math.ceil(total / per_page)),
            "sort": sort,
            "order": order,
            "filter": filt,
            "q": query,
            "features": rows,
        }

    @app.get("/features.json")
    def features_json(request: Request) -> dict[str, Any]:
        return feature_list(request)

    @app.get("/features", response_class=HTMLResponse)
    def features_html(request: Request) -> HTMLResponse:
        listing = feature_list(request)
        q = listing["q"].strip()
        if FEATURE_ID.fullmatch(q) and listing["total"] == 1:  # a feature id: go straight to it
            return RedirectResponse(f"/features/{int(q)}")  # type: ignore[return-value]
        current = {k: listing[k] for k in ("sort", "order", "filter", "q", "per_page")}

        def link(**changes: Any) -> str:
            params = {**current, "page": listing["page"], **changes}
            return "/features?" + urlencode({k: v for k, v in params.items() if v != ""})

        return page("list.html", request, link=link, token_query=bool(q) and not FEATURE_ID.fullmatch(q), **listing)

    def feature(request: Request, fid: str) -> dict[str, Any]:
        """The feature's row, its ablation effect (from RUN/ablation.json, when measured) and, when the request
        has a prompt, a steering result for it."""
        out = db.feature(_parse_feature_id(fid, db)) or {}
        out["ablation"] = _ablation(run_dir, out["id"])
        params = request.query_params
        prompt = params.get("prompt", "")
        if len(prompt) > MAX_TEXT_CHARS:
            raise HTTPException(400, f"prompt is {len(prompt)} characters long; give at most {MAX_TEXT_CHARS}")
        if prompt.strip():
            if image_run:
                raise HTTPException(400, _text_only("steering", db.meta))
            try:
                strength = float(params.get("strength", "4"))
            except ValueError:
                raise HTTPException(400, "strength must be a number, e.g. 4") from None
            if not math.isfinite(strength) or abs(strength) > 1000:
                raise HTTPException(400, "strength must be a number between -1000 and 1000")
            out["steering"] = fires_model.steer(out["id"], prompt, strength)
        return out

    @app.get("/features/{fid}.json")
    def feature_json(request: Request, fid: str) -> dict[str, Any]:
        return feature(request, fid)

    @app.get("/features/{fid}", response_class=HTMLResponse)
    def feature_html(request: Request, fid: str) -> HTMLResponse:
        params = request.query_params
        return page(
            "feature.html",
            request,
            f=feature(request, fid),
            prompt=params.get("prompt", ""),
            strength=params.get("strength", "4"),
        )

    def fires(request: Request) -> dict[str, Any]:
        if image_run:
            raise HTTPException(404, _text_only("What fires here?", db.meta))
        text = request.query_params.get("text", "")
        if len(text) > MAX_TEXT_CHARS:
            raise HTTPException(400, f"text is {len(text)} characters long; paste at most {MAX_TEXT_CHARS}")
        if not text.strip():
            return {"text": text, "tokens": [], "top_features": [], "error": None}
        result = fires_model.run(text)
        names = db.top_tokens([t["id"] for t in result.get("top_features", [])])
        for t in result.get("top_features", []):  # each feature with the tokens it is known for, not a bare id
            t["top_tokens"] = names.get(t["id"], [])
        return {"text": text, **result}

    @app.get("/fires.json")
    def fires_json(request: Request) -> dict[str, Any]:
        result = fires(request)
        if result.get("error"):
            return JSONResponse(result, status_code=503)  # type: ignore[return-value]
        return result

    @app.get("/fires", response_class=HTMLResponse)
    def fires_html(request: Request) -> HTMLResponse:
        result = fires(request)
        return page("fires.html", request, status=503 if result.get("error") else 200, **result)

    def attribution() -> dict[str, Any]:
        if image_run:
            raise HTTPException(404, _text_only("Attribution", db.meta))
        return _attribution(run_dir, site)

    @app.get("/attribution.json")
    def attribution_json() -> dict[str, Any]:
        return attribution()

    @app.get("/attribution", response_class=HTMLResponse)
    def attribution_html(request: Request) -> HTMLResponse:
        return page("attribution.html", request, **attribution())

    @app.get("/attribution.png")
    def attribution_png() -> FileResponse:
        path = run_dir / ATTRIBUTION_DIR / "attribution.png"
        if not path.is_file():
            raise HTTPException(404, "no attribution picture in this run; write one with sparsecode attribute")
        return FileResponse(path, media_type="image/png")

    @app.get("/meta.json")
    def meta_json() -> dict[str, Any]:
        return db.meta

    return app
