"""What a prompt may be: not empty, and not longer than ``MAX_PROMPT_CHARS``. One check for the CLI, the
pipeline and the web studio, free of torch so the studio validates a request before loading a model."""
from __future__ import annotations

from fundusgen.errors import FundusgenError

MAX_PROMPT_CHARS = 4000   # a longer prompt is an error, not a silent cut


def check_prompt(text: str, name: str = "prompt",
                 empty_hint: str = "describe the fundus to generate, or give attributes (--dr-grade, --eye ...)") -> None:
    """One clear error for an empty or overlong prompt (``name`` says which, e.g. a file's line)."""
    if not isinstance(text, str) or not text.strip():
        raise FundusgenError(f"empty {name}: {empty_hint}")
    if len(text) > MAX_PROMPT_CHARS:
        raise FundusgenError(f"{name} of {len(text)} characters is longer than the {MAX_PROMPT_CHARS} accepted")
