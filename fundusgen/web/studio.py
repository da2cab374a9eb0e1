"""The generation studio's back end: captions composed from attributes, and a queue of
generation jobs run one at a time by a worker thread, so the server keeps answering (raters,
progress polls) while images are made.

A job's images and their metadata are written to ``<data>/generated/<job>/<i>.png|.json``;
jobs left queued or running when the server stopped are run again when it starts.
"""
from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from fundusgen.caption.prompt import MAX_PROMPT_CHARS, check_prompt
from fundusgen.caption.template import attributes_from_options, contrast_caption, describe
from fundusgen.errors import FundusgenError
from fundusgen.vocab import Lesion, Region
from fundusgen.web.store import Store, now

log = logging.getLogger("fundusgen.web")

MAX_IMAGES = 8
MAX_STEPS = 200
MAX_RETRIES = 6  # anatomy retries per image: 96% of the default model's images are valid within 6 (model card)
MAX_PENDING = 32
ATTRIBUTES = ("eye", "dr_grade", "dme", "glaucoma", "cdr", "cataract", "quality")


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "any"))


def _yes_no(value: Any) -> bool | None:
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("yes", "true", "1"):
        return True
    if str(value).lower() in ("no", "false", "0"):
        return False
    raise FundusgenError(f"expected yes or no (got {value!r})")


def _form_attributes(form: Mapping[str, Any]) -> dict[str, Any]:
    options = {k: form.get(k) for k in ATTRIBUTES if not _blank(form.get(k))}
    for flag in ("dme", "glaucoma"):
        if flag in options:
            options[flag] = _yes_no(options[flag])
    return attributes_from_options(**options)


def compose_negative(form: Mapping[str, Any]) -> str:
    """The negative prompt of the form's attributes: their reversed findings, as `fundusgen generate`
    uses for attribute prompts ("" when there is nothing to contrast)."""
    return contrast_caption(_form_attributes(form))


def compose_caption(form: Mapping[str, Any], seed: int = 0) -> str:
    """Attributes from the studio's form -> the template caption, then one sentence naming the
    chosen lesions and where they are (``lesions``: list of {"lesion": ..., "region": ...})."""
    caption = describe(_form_attributes(form), seed=seed)
    phrases = []
    for entry in form.get("lesions") or []:
        try:
            lesion = Lesion(entry.get("lesion"))
            region = None if _blank(entry.get("region")) else Region(entry.get("region"))
        except (ValueError, AttributeError):
            raise FundusgenError(f"unknown lesion or region {entry!r}") from None
        phrases.append(lesion.value + (f" {region.value}" if region else ""))
    if phrases:
        text = "; ".join(phrases)
        caption += f" {text[0].upper()}{text[1:]}."
    return caption


@dataclass
class GenerationRequest:
    prompt: str
    count: int = 1
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    anatomy_retries: int = 0   # `fundusgen generate --anatomy-retries`: check each image, draw an invalid one again
    negative_prompt: str = ""  # what guidance steers away from ("": the empty caption)

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> "GenerationRequest":
        prompt = data.get("prompt")
        check_prompt(prompt, empty_hint="describe the fundus to generate, or compose it from attributes")
        negative = data.get("negative_prompt") or ""
        if not isinstance(negative, str):
            raise FundusgenError(f"negative prompt must be text (got {negative!r})")
        if negative:
            check_prompt(negative, "negative prompt")

        def number(key, kind, low, high, default):
            value = data.get(key)
            if _blank(value):
                return default
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise FundusgenError(f"{key} must be a number (got {value!r})") from None
            if not low <= value <= high:
                raise FundusgenError(f"{key} must be {low}-{high} (got {value})")
            return value

        return cls(prompt=prompt.strip(), count=number("count", int, 1, MAX_IMAGES, 1),
                   seed=number("seed", int, 0, 2**31 - 1, secrets.randbelow(2**31)),
                   steps=number("steps", int, 1, MAX_STEPS, None), guidance=number("guidance", float, 0.0, 30.0, None),
                   anatomy_retries=number("anatomy_retries", int, 0, MAX_RETRIES, 0),
                   negative_prompt=negative.strip())


class GenerationQueue:
    """Jobs in order, one worker thread. ``model_path`` None = the shipped default model."""

    def __init__(self, store: Store, out_dir: str | Path, model_path: str | Path | None = None):
        self.store = store
        self.out_dir = Path(out_dir)
        self.model_path = model_path
        self.pipe = None
        self.model_status = "loading"   # loading | ready | unavailable
        self.model_message = "loading the model"
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._progress: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- lifecycle ---
    def start(self) -> None:
        with self.store.transaction() as db:
            pending = [r[0] for r in db.execute("SELECT id FROM job WHERE status IN ('queued', 'running') ORDER BY created")]
            db.execute("UPDATE job SET status = 'queued' WHERE status = 'running'")
        for job_id in pending:
            self._queue.put(job_id)
        self._thread = threading.Thread(target=self._work, name="fundusgen-generation", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _load(self) -> None:
        from fundusgen.model.pipeline import FundusGen
        try:
            self.pipe = FundusGen.from_pretrained(self.model_path)
            self.model_status, self.model_message = "ready", f"model {self.pipe.name}"
        except Exception as e:  # a missing default model must not take the studies down with it
            reason = str(e) if isinstance(e, FundusgenError) else f"{type(e).__name__}: {e}"
            hint = "" if self.model_path else "; start the server with --model PATH"
            self.model_status, self.model_message = "unavailable", f"no model loaded: {reason}{hint}"
        log.info(self.model_message)

    @property
    def model_defaults(self) -> dict:
        config = self.pipe.config if self.pipe is not None else {}
        return {"steps": config.get("steps", 25), "guidance": config.get("guidance", 4.0),
                "resolution": config.get("resolution", 256)}

    # --- jobs ---
    def submit(self, request: GenerationRequest) -> str:
        if self.model_status == "unavailable":
            raise FundusgenError(self.model_message)
        if self._queue.qsize() >= MAX_PENDING:
            raise FundusgenError(f"the queue is full ({MAX_PENDING} jobs waiting); try again later")
        job_id = secrets.token_hex(8)
        with self.store.transaction() as db:
            db.execute("INSERT INTO job (id, created, status, params) VALUES (?, ?, 'queued', ?)",
                       (job_id, now(), json.dumps(asdict(request))))
        self._queue.put(job_id)
        return job_id

    def job(self, job_id: str) -> dict | None:
        row = self.store.one("SELECT * FROM job WHERE id = ?", job_id)
        if row is None:
            return None
        params = json.loads(row["params"])
        out = {"id": row["id"], "created": row["created"], "status": row["status"], "error": row["error"],
               "prompt": params["prompt"], "count": params["count"], "seed": params["seed"]}
        with self._lock:
            done, total = self._progress.get(job_id, (0.0, params["count"]))
        if row["status"] == "done":
            done = total = row["images"]
        out["progress"] = done / total if total else 0.0
        if row["status"] == "queued":
            ahead = self.store.one("SELECT COUNT(*) FROM job WHERE status IN ('queued', 'running') AND created < ?",
                                   row["created"])[0]
            out["ahead"] = ahead
        out["images"] = [{"png": f"/generated/{job_id}/{i}.png", "json": f"/generated/{job_id}/{i}.json"}
                         for i in range(row["images"])]
        return out

    def jobs(self, limit: int = 20) -> list[dict]:
        ids = [r[0] for r in self.store.all("SELECT id FROM job ORDER BY created DESC LIMIT ?", limit)]
        return [self.job(i) for i in ids]

    def _set(self, job_id: str, **fields) -> None:
        with self.store.transaction() as db:
            db.execute(f"UPDATE job SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?", (*fields.values(), job_id))

    def _work(self) -> None:
        self._load()
        while (job_id := self._queue.get()) is not None:
            row = self.store.one("SELECT params FROM job WHERE id = ?", job_id)
            request = GenerationRequest(**json.loads(row["params"]))
            if self.pipe is None:
                self._set(job_id, status="failed", error=self.model_message)
                continue
            self._set(job_id, status="running")
            try:
                self._run(job_id, request)
            except FundusgenError as e:
                self._set(job_id, status="failed", error=str(e))
            except Exception as e:  # a bug: keep the server up, say so, log the traceback
                log.exception("generation job %s failed", job_id)
                self._set(job_id, status="failed", error=f"internal error: {type(e).__name__}: {e}")
            finally:
                with self._lock:
                    self._progress.pop(job_id, None)

    def _run(self, job_id: str, request: GenerationRequest) -> None:
        def progress(done: float, total: int) -> None:
            with self._lock:
                self._progress[job_id] = (done, total)

        if request.anatomy_retries:
            from fundusgen.generate import sample_checked
            drawn = [sample_checked(self.pipe, request.prompt, request.seed + i, request.anatomy_retries,
                                    steps=request.steps, guidance=request.guidance,
                                    negative_prompt=request.negative_prompt,
                                    callback=lambda done, n, i=i: progress(i + done / n, request.count))
                     for i in range(request.count)]
        else:
            result = self.pipe(request.prompt, num_images=request.count, seed=request.seed, steps=request.steps,
                               guidance=request.guidance, negative_prompt=request.negative_prompt, callback=progress)
            drawn = list(zip(result.images, result.metadata))
        folder = self.out_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        for i, (image, meta) in enumerate(drawn):
            image.save(folder / f"{i}.png")
            (folder / f"{i}.json").write_text(json.dumps({**meta, "job": job_id}, indent=2))
        self._set(job_id, status="done", images=len(drawn))
