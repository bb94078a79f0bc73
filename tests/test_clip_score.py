"""CLIP score with tiny randomly initialised open_clip models (no CLIP weights exist offline)."""

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from lit_edify.metrics import ClipScorer, clip_preprocess, images_to_uint8
from lit_edify.metrics.synthetic import COLORS, SHAPES, draw_shapes, random_captions

TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny CLIP trained for a few steps to match shape captions to shape images."""
    torch.set_num_threads(1)
    cfg_path = tmp_path_factory.mktemp("cfg") / "lit_edify_tiny_clip.json"
    cfg_path.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model, _, preprocess_val = open_clip.create_model_and_transforms("lit_edify_tiny_clip", pretrained=None)
    tokenizer = open_clip.get_tokenizer("lit_edify_tiny_clip")
    pp = dict(model.visual.preprocess_cfg)
    classes = [f"a {c} {s}" for c in COLORS for s in SHAPES]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(40):
        caps = [classes[i] for i in torch.randperm(len(classes), generator=g)[:12].tolist()]
        img = F.normalize(model.encode_image(clip_preprocess(draw_shapes(caps, 32, seed=step), pp)), dim=-1)
        txt = F.normalize(model.encode_text(tokenizer(caps)), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        labels = torch.arange(len(caps))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"model": model.eval(), "tokenizer": tokenizer, "preprocess_val": preprocess_val, "cfg_path": cfg_path}


def test_missing_checkpoint_gives_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="clip_checkpoint"):
        ClipScorer.from_checkpoint(None)
    with pytest.raises(FileNotFoundError, match="does not exist.*clip_checkpoint"):
        ClipScorer.from_checkpoint(tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        ClipScorer.from_checkpoint(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        ClipScorer.from_checkpoint(tmp_path / "w.bin", model_name="no-such-arch")


def test_preprocess_matches_open_clip_pil_transform(tiny):
    from PIL import Image

    x = draw_shapes(random_captions(2, seed=3), 64, seed=3)[..., :48]  # non-square: resize + centre crop
    u8 = images_to_uint8(x)
    theirs = torch.stack([tiny["preprocess_val"](Image.fromarray(u.permute(1, 2, 0).numpy())) for u in u8])
    ours = ClipScorer(tiny["model"], tiny["tokenizer"]).preprocess(u8.float() / 127.5 - 1)
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    # PIL resamples in uint8, we in float: within ~2 grey levels of 255 (/ std 0.27)
    assert (ours - theirs).abs().max() < 0.03 and (ours - theirs).abs().mean() < 0.01


def test_scores_rank_matching_captions_above_mismatched(tiny):
    scorer = ClipScorer(tiny["model"], tiny["tokenizer"])
    caps = random_captions(24, seed=99)
    images = draw_shapes(caps, 64, seed=1234)
    matched = scorer.scores(images, caps)
    shifted = [caps[(i + 1) % len(caps)] for i in range(len(caps))]
    mismatched = scorer.scores(images, shifted)
    assert matched.shape == (24,) and bool(((matched >= 0) & (matched <= 100)).all())
    assert float(matched.mean()) > float(mismatched.mean()) + 20
    # batching does not change per-pair scores
    assert torch.allclose(scorer.scores(images, caps, batch_size=5), matched, atol=1e-4)
    with pytest.raises(ValueError, match="captions"):
        scorer.scores(images, caps[:3])


def test_checkpoint_file_and_folder_load_the_same_weights(tiny, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny["model"].state_dict().items()}
    caps = random_captions(6, seed=5)
    images = draw_shapes(caps, 48, seed=5)
    expected = ClipScorer(tiny["model"], tiny["tokenizer"]).scores(images, caps)

    weights = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, weights)
    from_file = ClipScorer.from_checkpoint(weights, model_name=str(tiny["cfg_path"]))
    assert torch.allclose(from_file.scores(images, caps), expected, atol=1e-5)

    folder = tmp_path / "tiny_clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY, "preprocess_cfg": {}}))
    save_file(state, str(folder / "open_clip_model.safetensors"))
    from_folder = ClipScorer.from_checkpoint(folder)
    assert torch.allclose(from_folder.scores(images, caps), expected, atol=1e-5)
    # an untrained model of the same architecture scores differently: the weights were really loaded
    torch.manual_seed(1)
    untrained = ClipScorer(open_clip.create_model("lit_edify_tiny_clip", pretrained=None), tiny["tokenizer"])
    assert not torch.allclose(untrained.scores(images, caps), expected, atol=1.0)
