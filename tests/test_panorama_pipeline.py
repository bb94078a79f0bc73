"""Sequential-inpainting panorama generation (loop closure, overlap, poles) and the HDR outputs."""
import math

import numpy as np
import pytest
import torch

from lit_edify.data_modules.hdr_world import Scene, Shape, render_equirect, render_view
from lit_edify.hdr_io import read_hdr
from lit_edify.panorama.camera import srgb_encode
from lit_edify.panorama.metrics import pole_spread, seam_ratio
from lit_edify.panorama.plan import assemble, view_plan
from lit_edify.pipelines.panorama import generate_views, hdr_to_outputs, inpaint_hint, naive_assembly

SCENE = Scene(sky="blue", sun_lon=60, sun_lat=35, sun_ratio_log2=16,
              shapes=[Shape("circle", "red", 0.0, 8.0, 12.0, "in front"), Shape("square", "yellow", 180.0, 8.0, 12.0, "behind")])


def ldr(x):
    return srgb_encode((x * 0.35).clamp(0, 1)) * 2 - 1


def test_inpaint_hint_layout():
    img, gen = torch.rand(1, 3, 4, 4), (torch.rand(1, 1, 4, 4) > 0.5).float()
    h = inpaint_hint(img, gen, "outpaint")
    assert h.shape == (1, 7, 4, 4) and torch.equal(h[:, :3], img * (1 - gen)) and torch.equal(h[:, 3:4], gen)
    assert torch.equal(h[:, 4:].mean((2, 3))[0], torch.tensor([0.0, 0.0, 1.0]))  # replace / inpaint / outpaint


def test_an_exact_sampler_reproduces_the_world_and_the_overlap_is_consistent():
    """With a sampler that renders the true view (a perfect inpainter), the assembled panorama is the world's
    equirectangular render and each view agrees with the earlier content in its overlap."""
    views = view_plan(8, 0.5, 10.0)
    calls = []

    def oracle(prompt, hint, pitch, seed):
        calls.append((hint[0, 3].mean().item(), pitch))
        return ldr(render_view(SCENE, views[len(calls) - 1], 32, 32))[None]

    gen = generate_views(oracle, "x", views, (32, 32), canvas=(128, 256))
    assert calls[0][0] == 1.0 and 0.2 < calls[1][0] < 0.8  # view 0: all to generate; view 1: its overlap is known
    assert [p for _, p in calls[-2:]] == [0, 2] and {p for _, p in calls[:-2]} == {1}
    assert calls[-2][0] < 0.5  # the zenith sees the overlap of all horizon views
    assert max(gen.overlap_mad) < 8 / 255
    pano = assemble(views, [(x + 1) / 2 for x in gen.images], (64, 128))
    truth = (ldr(render_equirect(SCENE, 64, 128)) + 1) / 2
    assert (pano - truth).abs().mean() < 0.03
    assert seam_ratio(pano) < 1.2
    top, bottom = pole_spread(pano)
    assert top <= pole_spread(truth)[0] + 0.01 and bottom <= pole_spread(truth)[1] + 0.01


def test_loop_closure_removes_the_wrap_seam_a_naive_assembly_shows():
    """A sampler that draws unrelated content per view (the worst inpainter): keeping the projected overlap closes
    the loop at the longitude wrap; the naive sequence (each view sees only its predecessor, hard assembly)
    leaves a seam there."""
    views = view_plan(8, 0.5, 10.0)

    def unrelated(prompt, hint, pitch, seed):
        g = torch.Generator().manual_seed(seed)
        colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
        ramp = torch.linspace(-0.2, 0.2, 32).view(1, 1, 32)
        return (colour + ramp).expand(3, 32, 32).clamp(-1, 1)[None]

    closed = generate_views(unrelated, "x", views, (32, 32))
    naive = generate_views(unrelated, "x", views, (32, 32), loop_closure=False)
    pano = assemble(views, [(x + 1) / 2 for x in closed.images], (64, 128))
    hard = naive_assembly(views, [(x + 1) / 2 for x in naive.images], (64, 128))
    assert seam_ratio(pano) <= 1.2 < seam_ratio(hard)
    # kept overlap: each view equals the projection of the earlier content where that was known
    for img, raw, known in zip(closed.images[1:], closed.raw[1:], closed.known[1:]):
        assert torch.equal(img * (1 - known), raw * (1 - known))


def test_hdr_outputs_are_written_atomically(tmp_path):
    log_hdr = (render_equirect(SCENE, 32, 64) + 1 / 1024).log().half()
    files = hdr_to_outputs(log_hdr, tmp_path / "pano.exr", preview_width=32)
    exr, rad = read_hdr(files["exr"]), read_hdr(files["hdr"])
    lin = (log_hdr.float().exp() - 1 / 1024).clamp(min=0).permute(1, 2, 0).numpy()
    assert np.allclose(exr, lin, rtol=2e-3, atol=1e-4) and abs(files["peak"] - lin.max()) < 1e-3 * lin.max()
    assert np.all(np.abs(rad - lin) <= lin.max(-1, keepdims=True) / 128 + 1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano.exr", "pano.hdr", "pano.png"]
    assert math.log2(lin.max() / np.median(lin)) > 15  # the sun survives in the files


def test_keep_known_replaces_the_estimate_only_where_known():
    from lit_edify.pipelines.panorama import keep_known

    known, x = torch.rand(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :3] = 1
    denoiser = lambda x, sigma, **kw: x * 0.5 + sigma  # noqa: E731
    d = keep_known(denoiser, known, mask)(x, 2.0)
    assert torch.equal(d[..., :3], known[..., :3]) and torch.equal(d[..., 3:], (x * 0.5 + 2.0)[..., 3:])


def test_bright_views_look_at_the_sun():
    from lit_edify.data_modules.hdr_data import HDRViews

    pano = render_equirect(SCENE, 64, 128, ss=1)
    views = HDRViews([pano], 32, 8, p_bright=1.0, fov_deg=(60, 90))
    for i in range(8):
        assert float(views[i]["image"].max()) > 2 ** 12  # the sun (2^16 x the sky) is in every view
    random_views = HDRViews([pano], 32, 64, p_bright=0.0, fov_deg=(60, 90))
    assert sum(float(random_views[i]["image"].max()) > 2 ** 12 for i in range(64)) < 32


def test_native_scale_views_keep_the_panoramas_pixel_pitch():
    from lit_edify.data_modules.hdr_data import HDRViews

    w = 256  # columns hold their own index: a view's centre-row step is its pixel pitch in panorama pixels
    pano = torch.arange(w, dtype=torch.float32).view(1, 1, w).expand(3, 128, w).contiguous()
    for scale in (1.0, 0.5):
        views = HDRViews([pano], 16, 24, pitch_deg=(0, 0), native_scale=(scale, scale))
        steps = [float(views[i]["image"][0, 8, 8] - views[i]["image"][0, 8, 7]) for i in range(24)]
        assert abs(float(np.median(steps)) - scale) < 0.01, (scale, steps)
    with pytest.raises(ValueError, match="native_scale"):
        HDRViews([pano], 16, 4, native_scale=(0.0, 1.0))


def test_boundary_ratio_sees_a_step_at_the_mask_edge():
    from lit_edify.panorama.metrics import boundary_ratio

    ramp = torch.linspace(0, 1, 16).view(1, 1, 16).expand(3, 16, 16).clone()
    known = torch.zeros(1, 16, 16)
    known[..., :6] = 1
    assert abs(boundary_ratio(ramp, known) - 1.0) < 1e-5  # the old content continues: no visible edge
    stepped = ramp.clone()
    stepped[..., 6:] += 0.3
    assert abs(boundary_ratio(stepped, known) - (0.3 + 1 / 15) / (1 / 15)) < 1e-4
