"""HDR file I/O: .exr (OpenEXR) and .hdr (Radiance via OpenCV), atomic, clear errors."""
import numpy as np
import pytest

from lit_edify.hdr_io import HDRError, check_hdr, list_hdr_files, read_hdr, write_exr, write_hdr


def hdr_image():
    rng = np.random.default_rng(0)
    return (2.0 ** rng.uniform(-8, 15, (12, 20, 3))).astype(np.float32)


def test_round_trips(tmp_path):
    a = hdr_image()
    write_exr(tmp_path / "a.exr", a)
    b = read_hdr(tmp_path / "a.exr")
    assert b.shape == a.shape and np.abs(b / a - 1).max() < 1e-3  # half floats: 11-bit mantissa
    write_exr(tmp_path / "f.exr", a, half=False)
    assert np.array_equal(read_hdr(tmp_path / "f.exr"), a)
    write_hdr(tmp_path / "a.hdr", a)
    c = read_hdr(tmp_path / "a.hdr")
    # RGBE: 8-bit mantissa shared by the pixel's channels, exact to 1/256 of the pixel's largest channel
    assert np.all(np.abs(c - a) <= a.max(-1, keepdims=True) / 128)
    assert [p.name for p in list_hdr_files(tmp_path)] == ["a.exr", "a.hdr", "f.exr"]


def test_bad_values_and_files_raise_clear_errors_and_write_nothing(tmp_path):
    a = hdr_image()
    a[3, 4, 1] = np.nan
    with pytest.raises(HDRError, match="NaN or infinite value.*row 3, column 4, channel 1"):
        write_exr(tmp_path / "n.exr", a)
    a[3, 4, 1] = 0
    a[3, 4, 1] = -0.05 * np.percentile(a, 99)
    with pytest.raises(HDRError, match="negative"):
        write_hdr(tmp_path / "n.hdr", a)
    assert list(tmp_path.iterdir()) == []
    good = hdr_image()
    write_exr(tmp_path / "keep.exr", good)
    with pytest.raises(HDRError):
        write_exr(tmp_path / "keep.exr", good * 1e5)  # overflows half floats: the old file stays
    assert np.allclose(read_hdr(tmp_path / "keep.exr"), good, rtol=1e-3)
    (tmp_path / "junk.exr").write_bytes(b"not an exr")
    with pytest.raises(HDRError, match="not a readable OpenEXR"):
        read_hdr(tmp_path / "junk.exr")
    with pytest.raises(HDRError, match="suffix"):
        read_hdr(tmp_path / "x.png")
    b = hdr_image()
    b[0, 0, 0] = -0.005 * np.percentile(b, 99)  # filter round-off, as in real EXRs: clamped, not refused
    assert check_hdr(b)[0, 0, 0] == 0 and b[0, 0, 0] < 0
    with pytest.raises(HDRError, match=r"\(H, W, 3\)"):
        check_hdr(np.zeros((4, 4)))
