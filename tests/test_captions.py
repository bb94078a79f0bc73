"""Caption mixing (ground-truth vs long captions), caption dropout and caption decoding."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from lit_edify.data_modules.captions import CaptionMixer, clean_caption, decode_caption
from lit_edify.data_modules.image_text import ImageTextDataModule

torch.set_num_threads(1)


def _within_3se(count: int, n: int, p: float) -> bool:
    se = math.sqrt(p * (1 - p) / n)
    return abs(count / n - p) <= 3 * se


@pytest.mark.parametrize("p_long", [0.1, 0.5, 0.8])
def test_long_caption_frequency_matches_p_long(p_long):
    mixer, rng, n = CaptionMixer(p_long=p_long), random.Random(1), 5000
    picks = [mixer("short", "a long caption", rng) for _ in range(n)]
    assert set(picks) == {"short", "a long caption"}
    assert _within_3se(picks.count("a long caption"), n, p_long)


def test_dropout_frequency_and_independence_from_mixing():
    mixer, rng, n = CaptionMixer(p_long=0.7, p_drop=0.2), random.Random(2), 6000
    picks = [mixer.choose("short", "long", rng)[1] for _ in range(n)]
    assert _within_3se(picks.count("dropped"), n, 0.2)
    kept = [p for p in picks if p != "dropped"]
    assert _within_3se(kept.count("long"), len(kept), 0.7)


def test_fallback_when_one_caption_is_missing():
    rng = random.Random(0)
    always_long, never_long = CaptionMixer(p_long=1.0), CaptionMixer(p_long=0.0)
    assert always_long("the short one", None, rng) == "the short one"
    assert always_long("the short one", "   ", rng) == "the short one"  # blank counts as missing
    assert never_long(None, "the long one", rng) == "the long one"
    assert never_long(float("nan"), "the long one", rng) == "the long one"  # e.g. a NaN table cell
    assert CaptionMixer().choose(None, None, rng) == ("", "none")
    assert CaptionMixer(p_drop=1.0).choose("a", "b", rng) == ("", "dropped")


def test_invalid_probabilities_are_rejected():
    with pytest.raises(ValueError, match="p_long"):
        CaptionMixer(p_long=1.5)
    with pytest.raises(ValueError, match="p_drop"):
        CaptionMixer(p_drop=-0.1)


def test_clean_and_decode():
    assert clean_caption("  a\n cat \t on\r\na mat ") == "a cat on a mat"
    assert clean_caption("\n \t") is None
    assert decode_caption("\ufeffcafé".encode()) == ("café", "utf-8")
    assert decode_caption("café".encode("cp1252")) == ("café", "cp1252")
    with pytest.raises(UnicodeDecodeError):
        decode_caption(b"caf\xe9", fallback=None)
    text, enc = decode_caption(b"\x81\x8d", fallback="cp1252")  # bytes undefined in cp1252
    assert enc == "utf-8-replace" and "\ufffd" in text


def test_datamodule_mixes_captions_at_the_configured_rate(tmp_path):
    rows = []
    for j in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * j, np.uint8)).save(tmp_path / f"{j}.png")
        rows.append({"file_name": f"{j}.png", "caption": f"short {j}", "long_caption": f"long {j}"})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    dm = ImageTextDataModule(
        root=str(tmp_path), resolution=32, multiple=16, num_workers=0, p_long=0.3, p_drop_caption=0.1
    )
    dm.setup("fit")
    torch.manual_seed(0)
    n = 2000
    caps = [dm.train_set[i % 4]["caption"] for i in range(n)]
    assert _within_3se(sum(c == "" for c in caps), n, 0.1)
    kept = [c for c in caps if c]
    assert _within_3se(sum(c.startswith("long") for c in kept), len(kept), 0.3)
