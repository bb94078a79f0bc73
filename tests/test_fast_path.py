"""The optimised training path (channels-last convolution weights, fused AdamW) computes what the eager
path computes: same losses and weights after several optimizer steps, to float32 round-off."""
import torch

from lit_edify.modules.config import flat
from lit_edify.modules.base import BaseModel


def _train(kw: dict, channels_last: bool, fused: bool, steps: int = 5) -> tuple[list[float], dict]:
    torch.manual_seed(0)
    m = BaseModel(**flat(**kw, channels_last=channels_last, fused_adamw=fused))
    opt = m.configure_optimizers()["optimizer"]
    assert bool(opt.defaults.get("fused")) == fused
    if channels_last:
        assert m.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    losses = _steps(m, opt, [["a red circle"] * 4] * steps)
    return losses, {k: v.detach().clone() for k, v in m.state_dict().items()}


def _steps(m: BaseModel, opt, captions: list[list[str]]) -> list[float]:
    """One optimizer step per caption list on seeded random 16 px images; the losses."""
    g, losses = torch.Generator().manual_seed(1), []
    for step, caps in enumerate(captions):
        batch = {"image": torch.rand(len(caps), 3, 16, 16, generator=g) * 2 - 1, "caption": caps}
        with m.seeded(step):
            loss = m.diffusion_loss(batch)[0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_channels_last_and_fused_adamw_match_the_eager_path(tiny_base_kwargs):
    kw = {**tiny_base_kwargs, "unet_overrides": {**tiny_base_kwargs["unet_overrides"], "linear_skip": True}}
    eager_losses, eager = _train(kw, channels_last=False, fused=False)
    fast_losses, fast = _train(kw, channels_last=True, fused=True)
    for a, b in zip(eager_losses, fast_losses):
        assert abs(a - b) <= 1e-4 * abs(a)
    # Adam moves every weight by about lr per step whatever the gradient's size, so round-off in a near-zero
    # gradient (zero-initialised layers) can change an update by a fraction of lr: bound the difference at 2%
    # of one step's size, far below the 5 * lr the weights travel
    worst = max((eager[k] - fast[k]).abs().max().item() for k in eager)
    assert worst < 0.02 * kw["lr"]
    # and the weights did move (the comparison is not between two untouched models)
    torch.manual_seed(0)
    fresh = BaseModel(**flat(**kw, channels_last=False, fused_adamw=False)).state_dict()
    assert max((fresh[k] - eager[k]).abs().max().item() for k in eager) > 1e-4


def test_compiled_context_is_padded_to_max_length_and_padding_changes_nothing(tiny_base_kwargs):
    """With ``compile`` every batch's context has max_length + 3 tokens (one graph for all caption lengths), and
    the masked padding positions leave the denoiser's output unchanged."""
    torch.manual_seed(0)
    eager = BaseModel(**flat(**tiny_base_kwargs)).eval()
    with torch.no_grad():  # non-zero output layers, so that the output depends on the context
        for p in eager.net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    padded = BaseModel(**flat(**tiny_base_kwargs, compile=True)).eval()
    padded.load_state_dict(eager.state_dict())
    captions = ["a red circle", "a small blue square on the left of a grey background"]
    ctx_e, mask_e = eager.encode_conditions(captions, drop=False)
    ctx_p, mask_p = padded.encode_conditions(captions, drop=False)
    max_length = tiny_base_kwargs["max_text_length"]
    assert ctx_e.shape[1] < max_length + 3 and ctx_p.shape[1] == max_length + 3
    assert mask_p.sum() == mask_e.sum()  # only masked positions were added
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        out_e, out_p = eager.denoise(x, sigma, ctx_e, mask_e), padded.denoise(x, sigma, ctx_p, mask_p)
        other = eager.denoise(x, sigma, *eager.encode_conditions(captions[::-1], drop=False))
    assert (other - out_e).abs().max() > 1e-4  # the context matters to the output
    torch.testing.assert_close(out_p, out_e, atol=2e-5, rtol=1e-5)


def test_compiled_training_matches_eager_with_varying_caption_lengths(tiny_base_kwargs):
    """A compiled U-Net traces one graph for batches whose captions have different token counts (a second shape
    used to trip the graph's stride guards under the Trainer) and trains to the eager losses. Dynamo's own
    "eager" backend keeps this fast; inductor (``compile=True`` in a recipe) needs minutes to build on a CPU
    (``benchmarks/train_throughput.py --compile`` runs it under the Trainer)."""
    from torch._dynamo.testing import CompileCounterWithBackend
    captions = [["a red circle"] * 4, ["a small blue square on the left of a grey background"] * 4, ["a cube"] * 4]

    def train(compile: bool) -> tuple[list[float], int]:
        torch.manual_seed(0)
        m = BaseModel(**flat(**tiny_base_kwargs, compile=compile))
        counter = CompileCounterWithBackend("eager")
        if compile:
            m.net.compile(backend=counter)  # what on_fit_start does, with a counting backend
        return _steps(m, m.configure_optimizers()["optimizer"], captions), counter.frame_count

    (eager, _), (compiled, graphs) = train(False), train(True)
    assert graphs == 1
    for a, b in zip(eager, compiled):
        assert abs(a - b) <= 1e-5 * abs(a)
