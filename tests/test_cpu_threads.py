"""Torch threads under a cgroup CPU quota (lit_edify.cpu_threads)."""
import torch

from lit_edify.cpu_threads import apply_cpu_quota, quota_cores, read_cpu_quota, threads_for_quota


def test_quota_cores_parses_cgroup_fields():
    assert quota_cores("150000", "100000") == 1.5
    assert quota_cores("50000", "100000") == 0.5
    assert quota_cores("max", "100000") is None  # cgroup v2: no quota
    assert quota_cores("-1", "100000") is None  # cgroup v1: no quota


def test_threads_capped_at_whole_cores_of_the_quota():
    assert threads_for_quota(2, None) == 2
    assert threads_for_quota(2, 1.5) == 1
    assert threads_for_quota(2, 0.5) == 1  # at least one thread
    assert threads_for_quota(8, 4.0) == 4
    assert threads_for_quota(2, 4.0) == 2  # a quota above the cores changes nothing


def test_read_cpu_quota_v2_v1_and_absent(tmp_path):
    v2 = tmp_path / "cpu.max"
    v1 = (tmp_path / "cfs_quota_us", tmp_path / "cfs_period_us")
    assert read_cpu_quota(v2, v1) is None  # no cgroup files
    v1[0].write_text("250000\n"), v1[1].write_text("100000\n")
    assert read_cpu_quota(v2, v1) == 2.5
    v2.write_text("max 100000\n")  # v2 wins when present
    assert read_cpu_quota(v2, v1) is None
    v2.write_text("150000 100000\n")
    assert read_cpu_quota(v2, v1) == 1.5
    v2.write_text("garbage")
    assert read_cpu_quota(v2, v1) is None


def test_apply_cpu_quota_sets_torch_threads_unless_omp_num_threads(monkeypatch, tmp_path):
    import lit_edify.cpu_threads as ct

    before = torch.get_num_threads()
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # one core
    monkeypatch.setattr(ct, "CGROUP_V2", tmp_path / "cpu.max")
    monkeypatch.setattr(ct, "CGROUP_V1", (tmp_path / "none", tmp_path / "none"))
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert apply_cpu_quota() is None and torch.get_num_threads() == 2  # the user's explicit choice
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert apply_cpu_quota() == 1 and torch.get_num_threads() == 1
        assert apply_cpu_quota() is None  # already within the quota
    finally:
        torch.set_num_threads(before)
