"""The artifact's on-disk contract and calibration's per-site choice, without a model."""
import json
import os

import pytest
import torch

from sage_cli.artifact import CONFIG, SCALES, FORMAT_VERSION, SitePolicy, read_artifact, write_artifact
from sage_cli.calibrate import candidates, normalize_arch, read_prompts
from sage_cli.calibrate.run import choose
from sage_cli.calibrate.stats import STATIC_V_HEADROOM, SiteStats
from sage_cli.errors import ArtifactError, CalibrationError
from sage_cli.settings import SageSettings, as_the_kernel_runs


def _config(sites):
    return {"format_version": FORMAT_VERSION, "sites": {k: v.to_json() for k, v in sites.items()}}


def test_artifact_round_trip_keeps_settings_fallbacks_and_static_scales(tmp_path):
    s = SageSettings(smooth_q=True)
    sites = {
        "model.layers.0.self_attn#0": SitePolicy("model.layers.0.self_attn#0", s, None, {"cos": 0.9995}, static_v_scale=True),
        "model.layers.1.self_attn#0": SitePolicy("model.layers.1.self_attn#0", None, "head dim 72 is not served"),
    }
    scale = torch.rand(3, 64) + 0.1
    write_artifact(tmp_path, _config(sites), {"model.layers.0.self_attn#0/v_scale": scale})
    art = read_artifact(tmp_path)
    pol = art.policy()
    got = pol["model.layers.0.self_attn#0"]
    assert got == s and torch.equal(got.v_scale, scale)
    assert pol["model.layers.1.self_attn#0"] is None
    assert art.sites["model.layers.1.self_attn#0"].fallback == "head dim 72 is not served"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["missing", "not-json", "old-format", "corrupt-scales"])
def test_bad_artifacts_are_one_line_errors(tmp_path, damage):
    write_artifact(tmp_path, _config({}), {"x/v_scale": torch.ones(2)})
    if damage == "missing":
        (tmp_path / CONFIG).unlink()
    elif damage == "not-json":
        (tmp_path / CONFIG).write_text("{nope")
    elif damage == "old-format":
        (tmp_path / CONFIG).write_text(json.dumps({"format_version": 0, "sites": {}}))
    else:
        (tmp_path / SCALES).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ArtifactError) as e:
        read_artifact(tmp_path)
    assert "\n" not in str(e.value)


def test_read_only_model_folder_names_out(tmp_path):
    ro = tmp_path / "snapshot"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root): a read-only folder cannot be made")
        with pytest.raises(ArtifactError, match="--out"):
            write_artifact(ro / "sage", _config({}), {})
    finally:
        ro.chmod(0o755)


def test_read_only_check_also_catches_a_file_in_the_way(tmp_path):
    (tmp_path / "sage").write_text("a file where the artifact folder should go")
    with pytest.raises(ArtifactError, match="--out"):
        write_artifact(tmp_path / "sage", _config({}), {})


def test_choose_takes_the_cheapest_candidate_within_budget():
    a, b, c = SageSettings(), SageSettings(smooth_q=True), SageSettings(smooth_q=True, smooth_v=True)
    trials = [(a, {"cos": 0.998, "rel_l1": 0.03}), (b, {"cos": 0.9993, "rel_l1": 0.02}), (c, {"cos": 0.9999, "rel_l1": 0.01})]
    s, m, why = choose(trials, 0.999, 0.04, margin=0.0)
    assert s == b and why is None and m["cos"] == 0.9993
    s, m, why = choose(trials, 0.999, 0.04, margin=0.5)  # 0.9993 is within budget but not with half to spare
    assert s == c
    s, m, why = choose(trials, 0.99999, 0.04)
    assert s is None and "best was" in why and "+sq +sv" in why


def test_hopper_never_gets_int4_and_ampere_never_fp8():
    assert all(c.qk_dtype == "int8" and c.pv_dtype == "fp8" for c in candidates("90a"))
    assert any(c.qk_dtype == "int4" for c in candidates("89"))
    assert all(c.pv_dtype == "fp16" for c in candidates("sm_86"))
    assert normalize_arch("sm_90a") == "90"
    with pytest.raises(ValueError, match="supported"):
        normalize_arch("75")


def test_hopper_candidates_are_measured_with_the_hopper_kernels_numerics():
    """sm_90 runs the wgmma kernel (K block 128, row sum through the P.V MMA); the mma.sync targets keep the
    reference defaults, which are theirs (the GPU tests check both against the kernels themselves)."""
    assert all(c.blk_k == 128 and c.row_sum == "mma" for c in candidates("90"))
    assert all(c.blk_k == 64 and c.row_sum == "fp32" for a in ("80", "86", "89") for c in candidates(a))
    fp16 = SageSettings(pv_dtype="fp16")  # on an H100 FP16 PV runs mma.sync
    assert as_the_kernel_runs(fp16, "sm_90") == fp16.replace(blk_k=64, row_sum="fp32")
    assert as_the_kernel_runs(SageSettings(), None) == SageSettings()


def test_read_prompts_paragraphs_lines_and_empty(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("first para\ncontinues\n\nsecond\n")
    assert read_prompts(p) == ["first para continues", "second"]
    p.write_text("one\ntwo\nthree\n")
    assert read_prompts(p) == ["one", "two", "three"]
    p.write_text("\n \n")
    with pytest.raises(CalibrationError, match="empty"):
        read_prompts(p)
    with pytest.raises(CalibrationError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_site_stats_counts_nonfinite_and_records_scales():
    st = SiteStats()
    q = torch.randn(1, 4, 256, 64)
    k = torch.randn(1, 2, 256, 64) + 3.0
    v = torch.randn(1, 2, 256, 64)
    assert st.update(q, k, v, masked=False)
    bad = v.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert not st.update(q, k, bad, masked=False)
    s = st.summary()
    assert s["calls"] == 2 and s["nonfinite_values"] == 1 and s["tokens"] == 256
    t = st.tensors()
    assert t["v_scale"].shape == (2, 64)
    torch.testing.assert_close(t["v_scale"], v.abs().amax(dim=(0, 2)) * STATIC_V_HEADROOM / 448)
    assert float(t["k_mean"].mean()) == pytest.approx(3.0, abs=0.2)
