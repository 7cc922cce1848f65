"""The copy kernel model: HBM read/write mix, host-link classes and sharing, NVLink copy modes."""
import pytest

from moesim.calibration.kernel_fit import bind
from moesim.calibration.kernel_params import definitions
from moesim.validation.cases import Case, Skip
from moesim.validation.copy_model import prepare


def defaults():
    return {k: d.value for k, d in definitions().items()}


def case(system="dgx-h100", gpus=1, **params):
    return Case(id="c", what="memcpy", system=system, gpus=gpus, metric="GBps", measured=1.0, source="s",
                params=params)


def test_babelstream_ops_differ_by_written_bytes():
    v = dict(defaults(), **{"copy.hbm_write_cost": 1.25})
    bw = {op: prepare(case(path="hbm", op=f"babelstream_{op}"), None).predict(v)
          for op in ("copy", "mul", "add", "triad", "dot")}
    assert bw["dot"] > bw["triad"] == bw["add"] > bw["copy"] == bw["mul"]
    assert bw["dot"] == pytest.approx(3350 * v["copy.hbm_eff.hopper"])  # read-only: the streaming rate
    neutral = dict(v, **{"copy.hbm_write_cost": 1.0})
    assert prepare(case(path="hbm", op="babelstream_copy"), None).predict(neutral) == pytest.approx(bw["dot"])


def test_gb200_host_link_is_shared_c2c():
    v = defaults()
    gb = prepare(case(system="gb200-nvl72", path="host_to_device", engine="sm"), None)
    h100 = prepare(case(path="host_to_device", engine="sm"), None)
    assert gb.predict(v) == pytest.approx(450 / 2 * v["copy.host_eff.c2c"])  # two GPUs per Grace C2C port
    assert h100.predict(v) == pytest.approx(64 * v["copy.host_eff.pcie"])
    assert "copy.host_eff.c2c" in bind(gb, v).params and "copy.host_eff.pcie" in bind(h100, v).params


def test_nvlink_copy_modes():
    v = dict(defaults(), **{"copy.bidir_eff": 0.9, "copy.sm_eff.hopper": 0.9})
    uni_ce = prepare(case(gpus=2, path="nvlink_p2p", direction="unidirectional", engine="copy_engine"), None)
    bi_ce = prepare(case(gpus=2, path="nvlink_p2p", direction="bidirectional", engine="copy_engine"), None)
    bi_sm = prepare(case(gpus=2, path="nvlink_p2p", direction="bidirectional", engine="sm"), None)
    assert bi_ce.predict(v) == pytest.approx(2 * 0.9 * uni_ce.predict(v))
    assert bi_sm.predict(v) == pytest.approx(0.9 * bi_ce.predict(v))
    assert "copy.sm_eff.hopper" not in bind(uni_ce, v).params


def test_skips_with_reason():
    with pytest.raises(Skip, match="engine not stated"):
        prepare(case(gpus=2, path="nvlink_p2p"), None)
    with pytest.raises(Skip, match="path"):
        prepare(case(path="nvme"), None)
    with pytest.raises(Skip, match="no byte count"):
        prepare(case(path="hbm", op="babelstream_nstream"), None)
