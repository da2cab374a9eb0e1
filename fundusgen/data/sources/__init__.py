"""Dataset adapters: each module turns one native layout into FundusRecords.

An adapter is a module with ``NAME`` and ``read(root, report, **options) -> list[FundusRecord]``.
Adding a dataset means adding one module here and one fixture in tests/.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Sequence

from fundusgen.data.record import FundusRecord
from fundusgen.data.sources._common import Problem, Report, SourceError
from fundusgen.data.sources.errata import SHIPPED, apply_errata, load_errata

_MODULES = (
    # the datasets in ../shared/data
    "mex_dme_dr", "srahim_dr", "eye_diseases_4class", "csdi_cataract",
    "drive", "chase_db1", "stare", "drishti_gs1",
    # public datasets in their official layouts
    "aptos", "eyepacs", "idrid", "messidor2", "refuge", "airogs", "odir", "rfmid", "hrf",
    # generic layouts
    "csv_folder", "image_folder",
)


def _load(name: str):
    return importlib.import_module(f"fundusgen.data.sources.{name}")


def _adapters():
    for m in _MODULES:
        try:
            yield _load(m)
        except ModuleNotFoundError as e:
            if e.name != f"fundusgen.data.sources.{m}":
                raise


def available() -> list[str]:
    return [mod.NAME for mod in _adapters()]


def get(name: str) -> Callable[..., list[FundusRecord]]:
    for mod in _adapters():
        if mod.NAME == name:
            return mod.read
    raise SourceError(f"unknown dataset kind {name!r}; known: {', '.join(available())}")


def read_source(name: str, root: str | Path, report: Report | None = None, *,
                errata: Sequence[str | Path] | None = None, **options) -> list[FundusRecord]:
    """The records of dataset kind ``name`` at ``root``, with label errata applied: the shipped
    ones (``errata.csv``) when ``errata`` is None, else those of the files given (``()``: none)."""
    import inspect
    problems: list[Problem] = []
    report = report or problems.append
    read = get(name)
    accepted = inspect.signature(read).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise SourceError(f"{root}: dataset kind {name!r} takes no option(s) {', '.join(unknown)}")
    fixes = load_errata([SHIPPED] if errata is None else errata)
    records = read(Path(root).expanduser().resolve(), report, **options)
    return apply_errata(records, fixes, report) if fixes else records


__all__ = ["FundusRecord", "Problem", "Report", "SourceError", "available", "get", "read_source"]
