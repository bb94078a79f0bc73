import warnings

import pytest
import torch
from transformers import T5Config

from lit_edify.nn.conditioning import ConditionEmbedder, TextEncoder
from lit_edify.nn.presets import build_condition_embedder, build_unet

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder("minilm", max_length=16)


@pytest.fixture(scope="module")
def tiny_t5(minilm):
    # A random tiny T5 encoder; the MiniLM tokenizer's 30522 ids fit its vocabulary.
    cfg = T5Config(vocab_size=minilm.tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64,
                   num_layers=2, num_heads=4)
    torch.manual_seed(0)
    return TextEncoder.from_config(cfg, tokenizer=minilm.tokenizer, max_length=16)


def _count_calls(encoder: TextEncoder) -> list:
    calls = []
    inner = encoder.model.forward

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return inner(*args, **kwargs)

    encoder.model.forward = counted
    return calls


@pytest.mark.parametrize("which", ["minilm", "t5"])
def test_encode_shapes_mask_and_padding(which, minilm, tiny_t5):
    enc = minilm if which == "minilm" else tiny_t5
    assert enc.dim == (384 if which == "minilm" else 32)
    assert type(enc.model).__name__ == ("BertModel" if which == "minilm" else "T5EncoderModel")
    tokens, mask = enc.encode(["a red cube", "a photo of a small green sphere on a table"])
    assert tokens.dtype == torch.float32 and mask.dtype == torch.bool
    assert tokens.shape[:2] == mask.shape and tokens.shape[0] == 2 and tokens.shape[2] == enc.dim
    n0, n1 = mask.sum(1).tolist()
    assert n0 < n1 == mask.shape[1]  # padded to the longest caption
    assert mask[0, :n0].all() and not mask[0, n0:].any()
    assert tokens[0, n0:].abs().sum() == 0 and tokens[0, :n0].abs().sum() > 0


def test_cache_avoids_reencoding_and_is_bounded(minilm):
    enc = TextEncoder.from_config(minilm.model.config, tokenizer=minilm.tokenizer, cache_size=2)
    calls = _count_calls(enc)
    t1, _ = enc.encode(["a cat", "a dog", "a cat"])
    assert calls == [2]  # duplicate caption encoded once
    torch.testing.assert_close(t1[0], t1[2])
    t2, _ = enc.encode(["a dog", "a cat"])
    assert calls == [2]  # both cached
    torch.testing.assert_close(t2[1], t1[0])
    enc.encode(["a bird"])  # evicts the least recently used ("a dog")
    assert list(enc._cache) == ["a cat", "a bird"]
    enc.encode(["a dog"])
    assert calls == [2, 1, 1]


def test_long_caption_truncated_with_warning(minilm):
    long = "a very long caption " * 20
    with pytest.warns(UserWarning, match="truncated from .* to 16 tokens"):
        tokens, mask = minilm.encode([long])
    assert tokens.shape[1] == 16 and mask.all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        minilm.encode([long])  # cached: warned once per caption


def test_pad_to_max_length(minilm):
    enc = TextEncoder.from_config(minilm.model.config, tokenizer=minilm.tokenizer, max_length=12,
                                  pad_to_max_length=True)
    tokens, mask = enc.encode(["hi"])
    assert tokens.shape == (1, 12, 384) and mask.sum() == 3  # [CLS] hi [SEP]
    assert enc.encode(["hi"], pad_to_max_length=False)[0].shape == (1, 3, 384)  # per call
    assert minilm.encode(["hi"], pad_to_max_length=True)[0].shape == (1, minilm.max_length, 384)
    assert minilm.encode(["hi"])[0].shape == (1, 3, 384)  # the encoder's own setting is unchanged


def test_frozen_and_not_in_state_dict(minilm):
    assert all(not p.requires_grad for p in minilm.model.parameters())
    minilm.train()
    assert not minilm.model.training  # stays in eval mode (no dropout)
    assert not any(k.startswith("model.") for k in minilm.state_dict())
    before = next(minilm.model.parameters()).clone()
    minilm.load_state_dict({})  # strict load keeps the loaded encoder
    torch.testing.assert_close(next(minilm.model.parameters()), before)


def test_missing_model_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="local directory.*minilm"):
        TextEncoder(str(tmp_path / "t5-v1_1-xxl"))
    with pytest.raises(TypeError, match="list of strings"):
        TextEncoder.encode(None, "a caption")


def _labels(b, pitch=0, dof=1, media=2):
    full = lambda v: torch.full((b,), v, dtype=torch.long)
    return full(pitch), full(dof), full(media)


def test_embedder_shapes_and_explicit_dropping():
    torch.manual_seed(0)
    emb = ConditionEmbedder(text_dim=32, context_dim=16).eval()
    b, length = 3, 5
    text = torch.randn(b, length, 32)
    tmask = torch.ones(b, length, dtype=torch.bool)
    tmask[1, 2:] = False
    ctx, mask = emb(text, tmask, *_labels(b))
    assert ctx.shape == (b, length + 3, 16) and mask.shape == (b, length + 3)
    assert torch.equal(mask[:, :length], tmask) and mask[:, length:].all()
    torch.testing.assert_close(emb(text, tmask, *_labels(b))[0], ctx)  # eval: nothing random

    drop = torch.tensor([True, False, False])
    ctx_t, mask_t = emb(text, tmask, *_labels(b), drop_text=drop)
    assert mask_t[0].tolist() == [True] + [False] * (length - 1) + [True] * 3
    torch.testing.assert_close(ctx_t[1:], ctx[1:])
    other = emb(torch.randn(b, length, 32), tmask, *_labels(b), drop_text=drop)[0]
    torch.testing.assert_close(other[0, [0, length, length + 1, length + 2]],
                               ctx_t[0, [0, length, length + 1, length + 2]])
    # camera dropped == unknown (-1) pitch and dof; media stays
    ctx_c = emb(text, tmask, *_labels(b), drop_camera=True)[0]
    ctx_u = emb(text, tmask, *_labels(b, pitch=-1, dof=-1))[0]
    torch.testing.assert_close(ctx_c, ctx_u)
    assert not torch.allclose(ctx_c[:, length:length + 2], ctx[:, length:length + 2])
    torch.testing.assert_close(ctx_c[:, length + 2], ctx[:, length + 2])
    # all dropped == unconditional()
    ctx_all, mask_all = emb(text, tmask, *_labels(b), True, True, True)
    ctx_unc, mask_unc = emb.unconditional(b, text_len=length)
    torch.testing.assert_close(ctx_all, ctx_unc)
    assert torch.equal(mask_all, mask_unc)


def test_training_drops_groups_independently():
    emb = ConditionEmbedder(16, 8, p_drop_text=0.5, p_drop_camera=0.5, p_drop_media=0.5).train()
    b = 2000
    torch.manual_seed(0)
    text = torch.randn(b, 2, 16)
    ctx, mask = emb(text, torch.ones(b, 2, dtype=torch.bool), *_labels(b))
    unc, _ = emb.unconditional(b, text_len=2)
    dropped = [(ctx[:, i] - unc[:, i]).abs().amax(-1) < 1e-6 for i in (0, 2, 3, 4)]
    assert torch.equal(dropped[0], ~mask[:, 1])  # dropped text masks its other positions
    assert torch.equal(dropped[1], dropped[2])  # pitch and dof drop together (camera group)
    text_d, cam_d, media_d = (d.float() for d in (dropped[0], dropped[1], dropped[3]))
    for d in (text_d, cam_d, media_d):
        assert 0.45 < d.mean() < 0.55
    # independent groups: P(text and camera dropped) ~ 1/4, P(all three) ~ 1/8
    assert 0.2 < (text_d * cam_d).mean() < 0.3
    assert 0.09 < (text_d * cam_d * media_d).mean() < 0.16
    emb.p_drop_text = emb.p_drop_camera = emb.p_drop_media = 0.0
    ctx0, mask0 = emb(text, torch.ones(b, 2, dtype=torch.bool), *_labels(b))
    assert mask0.all() and not ((ctx0[:, 0] - unc[:, 0]).abs().amax(-1) < 1e-6).any()


def test_embedder_errors():
    emb = ConditionEmbedder(16, 8)
    text, tmask = torch.randn(2, 3, 16), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"pitch labels must be in \[-1, 2\]"):
        emb(text, tmask, torch.tensor([0, 3]), torch.zeros(2).long(), torch.zeros(2).long())
    with pytest.raises(ValueError, match="media_type must have shape"):
        emb(text, tmask, torch.zeros(2).long(), torch.zeros(2).long(), torch.zeros(3).long())
    with pytest.raises(ValueError, match="p_drop_text"):
        ConditionEmbedder(16, 8, p_drop_text=1.5)


def test_end_to_end_gradients_skip_frozen_encoder(minilm):
    torch.manual_seed(0)
    unet = build_unet("tiny")
    cond = build_condition_embedder("tiny", p_drop_text=0.0, p_drop_camera=0.0, p_drop_media=0.0)
    with torch.no_grad():
        for p in list(unet.parameters()) + list(cond.parameters()):
            p.add_(0.05 * torch.randn_like(p))
    tokens, tmask = minilm.encode(["a red cube", "a blue ball on grass"])
    ctx, mask = cond(tokens, tmask, *_labels(2), drop_text=torch.tensor([False, True]))
    out = unet(torch.randn(2, 3, 32, 32), torch.randn(2), ctx, mask)
    out.square().mean().backward()
    assert all(p.grad is None for p in minilm.model.parameters())
    no_grad = [n for n, p in [*unet.named_parameters(), *cond.named_parameters()]
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
