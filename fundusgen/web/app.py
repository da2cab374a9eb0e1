"""The web app: generation studio, reading studies for raters, results for organisers.

Access is by link: a rater's link carries their private token, an organiser's link the study's
organiser token; both are checked on every request, and a token only ever reaches its own
rater's items or its own study. Rater pages and images carry nothing but the picture: no file
name, no truth, no metadata, no caching.
"""
from __future__ import annotations

import re
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from fundusgen.errors import FundusgenError
from fundusgen.vocab import Lesion, Region
from fundusgen.web import study as studies
from fundusgen.web.stats import REAL, STRUCTURES, SYNTHETIC
from fundusgen.web.store import Store
from fundusgen.web.studio import (MAX_IMAGES, MAX_PROMPT_CHARS, MAX_RETRIES, MAX_STEPS, GenerationQueue, GenerationRequest,
                                  compose_caption, compose_negative)

HERE = Path(__file__).parent
DATABASE = "fundusgen.sqlite"
MAX_FORM_BYTES = 256 * 1024
MAX_UPLOAD_BYTES = 2 * 1024**3
MAX_IMAGE_BYTES = 50 * 1024**2
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; object-src 'none'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
}
GENERATED_FILE = re.compile(r"^(\d+)\.(png|json)$")


def create_app(data_dir: str | Path, model_path: str | Path | None = None) -> FastAPI:
    data_dir = Path(data_dir)
    store = Store(data_dir / DATABASE)
    generator = GenerationQueue(store, data_dir / "generated", model_path)
    templates = Jinja2Templates(directory=HERE / "templates")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        generator.start()
        yield
        await run_in_threadpool(generator.stop)

    app = FastAPI(title="fundusgen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store, app.state.generator, app.state.data_dir = store, generator, data_dir
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, template, context, status_code=status)

    def error_page(request: Request, status: int, message: str) -> HTMLResponse:
        return page(request, "error.html", status, message=message, code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        limit = MAX_UPLOAD_BYTES if request.url.path == "/studies" else MAX_FORM_BYTES
        length = request.headers.get("content-length", "0")
        if not length.isdigit() or int(length) > limit:
            return Response("request too large", status_code=413)
        response = await call_next(request)
        for k, v in HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    @app.exception_handler(studies.NotFound)
    async def not_found(request: Request, e: studies.NotFound):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(e)}, status_code=404)
        return error_page(request, 404, str(e))

    @app.exception_handler(FundusgenError)
    async def bad_input(request: Request, e: FundusgenError):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(e)}, status_code=400)
        return error_page(request, 400, str(e))

    # --- home and studio ---
    @app.get("/", response_class=HTMLResponse)
    def home(request: Request):
        return page(request, "index.html", model=generator.model_message)

    @app.get("/studio", response_class=HTMLResponse)
    def studio(request: Request):
        return page(request, "studio.html", status_name=generator.model_status, model=generator.model_message,
                    defaults=generator.model_defaults, lesions=list(Lesion), regions=list(Region),
                    max_images=MAX_IMAGES, max_steps=MAX_STEPS, max_retries=MAX_RETRIES, max_prompt=MAX_PROMPT_CHARS)

    @app.get("/api/model")
    def model():
        return {"status": generator.model_status, "message": generator.model_message, **generator.model_defaults}

    @app.post("/api/caption")
    async def caption(request: Request):
        form = await _json(request)
        return {"caption": compose_caption(form), "negative_prompt": compose_negative(form)}

    @app.post("/api/jobs", status_code=202)
    async def submit(request: Request):
        job_request = GenerationRequest.parse(await _json(request))
        try:
            job_id = await run_in_threadpool(generator.submit, job_request)
        except FundusgenError as e:
            return JSONResponse({"error": str(e)}, status_code=503)
        return generator.job(job_id)

    @app.get("/api/jobs")
    def jobs():
        return {"jobs": generator.jobs()}

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str):
        found = generator.job(job_id) if re.fullmatch(r"[0-9a-f]{16}", job_id) else None
        if found is None:
            raise studies.NotFound("no such job")
        return found

    @app.get("/generated/{job_id}/{name}")
    def generated(job_id: str, name: str):
        match = GENERATED_FILE.match(name)
        path = data_dir / "generated" / job_id / name
        if not re.fullmatch(r"[0-9a-f]{16}", job_id) or not match or not path.is_file():
            raise studies.NotFound("no such image")
        media = "image/png" if match[2] == "png" else "application/json"
        return FileResponse(path, media_type=media, filename=f"fundusgen-{job_id}-{name}",
                            content_disposition_type="inline")

    # --- organiser ---
    @app.get("/studies/new", response_class=HTMLResponse)
    def new_study(request: Request):
        return page(request, "study_new.html", max_images=studies.MAX_IMAGES_PER_SIDE)

    @app.post("/studies")
    async def create_study(request: Request):
        form = await request.form(max_files=2 * studies.MAX_IMAGES_PER_SIDE, max_fields=20)
        images = {}
        for side in (REAL, SYNTHETIC):
            images[side] = []
            for upload in form.getlist(side):
                name = getattr(upload, "filename", None)
                if not name or Path(name).suffix.lower() not in studies.IMAGE_SUFFIXES:
                    continue  # a folder upload brings along whatever else is in the folder
                if (upload.size or 0) > MAX_IMAGE_BYTES:
                    raise FundusgenError(f"{name}: larger than {MAX_IMAGE_BYTES // 2**20} MB")
                images[side].append((name, await upload.read()))
        spec = studies.StudySpec(
            real=images[REAL], synthetic=images[SYNTHETIC], name=str(form.get("name") or "Reading study"),
            n_real=_count(form.get("n_real"), "number of real images"),
            n_synthetic=_count(form.get("n_synthetic"), "number of synthetic images"),
            repeats=_count(form.get("repeats"), "repeats") or 0,
            raters=[line.strip() for line in str(form.get("raters") or "").splitlines() if line.strip()],
            scale=_count(form.get("scale"), "scale") or 5, size=_count(form.get("size"), "image size") or 512)
        created = await run_in_threadpool(studies.create_study, store, data_dir, spec)
        return RedirectResponse(f"/o/{created.organiser_token}", status_code=303)

    @app.get("/o/{token}", response_class=HTMLResponse)
    def organiser(request: Request, token: str):
        s = studies.study_by_organiser_token(store, token)
        rows = studies.answer_rows(store, s["id"])
        return page(request, "results.html", study=s, token=token, raters=studies.raters(store, s["id"]),
                    summary=studies.summary(rows), answered=len(rows), base=str(request.base_url).rstrip("/"),
                    structures=STRUCTURES, labels=studies.STRUCTURE_LABELS,
                    n_images=store.one("SELECT COUNT(*) FROM image WHERE study_id = ?", s["id"])[0])

    @app.post("/o/{token}/raters")
    async def add_rater(token: str, request: Request):
        s = studies.study_by_organiser_token(store, token)
        form = await request.form(max_files=0, max_fields=5)
        await run_in_threadpool(studies.add_rater, store, s["id"], str(form.get("name") or ""))
        return RedirectResponse(f"/o/{token}#raters", status_code=303)

    @app.get("/o/{token}/answers.csv")
    def answers_csv(token: str):
        s = studies.study_by_organiser_token(store, token)
        return _csv(studies.answers_csv(studies.answer_rows(store, s["id"])), f"study-{s['id']}-answers.csv")

    @app.get("/o/{token}/summary.csv")
    def summary_csv(token: str):
        s = studies.study_by_organiser_token(store, token)
        return _csv(studies.summary_csv(studies.summary(studies.answer_rows(store, s["id"]))),
                    f"study-{s['id']}-summary.csv")

    # --- rater ---
    def rate_page(request: Request, rater, status: int = 200, error: str | None = None):
        answered, total = studies.rater_progress(store, rater["id"])
        item = studies.next_item(store, rater["id"])
        if item is None:
            return page(request, "rate_done.html", rater=rater, total=total)
        return page(request, "rate.html", status, rater=rater, item=item, position=answered + 1, total=total,
                    structures=STRUCTURES, labels=studies.STRUCTURE_LABELS, scale=rater["scale"],
                    confidence_levels=studies.CONFIDENCE_LEVELS, error=error, token=request.path_params["token"])

    @app.get("/r/{token}", response_class=HTMLResponse)
    def rate(request: Request, token: str):
        return rate_page(request, studies.rater_by_token(store, token))

    @app.post("/r/{token}/answer")
    async def answer(request: Request, token: str):
        rater = await run_in_threadpool(studies.rater_by_token, store, token)
        form = await request.form(max_files=0, max_fields=20)
        try:
            parsed = studies.parse_answer({k: str(v) for k, v in form.items()}, rater["scale"])
        except FundusgenError as e:
            return await run_in_threadpool(rate_page, request, rater, 400, str(e))
        await run_in_threadpool(studies.record_answer, store, rater["id"], str(form.get("item") or ""), parsed)
        return RedirectResponse(f"/r/{token}", status_code=303)

    @app.get("/r/{token}/pause", response_class=HTMLResponse)
    def pause(request: Request, token: str):
        rater = studies.rater_by_token(store, token)
        answered, total = studies.rater_progress(store, rater["id"])
        return page(request, "rate_paused.html", rater=rater, answered=answered, total=total, token=token)

    @app.get("/r/{token}/image/{item_id}")
    def rate_image(token: str, item_id: str):
        rater = studies.rater_by_token(store, token)
        # the bytes only: no file name, no Last-Modified or ETag that could order the images
        return Response(studies.item_file(store, rater["id"], item_id).read_bytes(), media_type="image/jpeg")

    @app.get("/healthz")
    def healthz():
        return {"ok": True, "model": generator.model_status}

    return app


async def _json(request: Request) -> dict:
    try:
        data = await request.json()
    except ValueError:
        raise FundusgenError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise FundusgenError("the request body must be a JSON object")
    return data


def _count(value, what: str) -> int | None:
    value = str(value or "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise FundusgenError(f"{what} must be a whole number (got {value!r})")
    return int(value)


def _csv(text: str, filename: str) -> Response:
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
