"""`moesim whatif`: base against single (or grouped) changes; system changes keep measured efficiency."""
import json

import pytest
from click.testing import CliRunner

from moesim.cli import main
from moesim.core.errors import MoesimError
from moesim.planning.whatif import whatif


def test_each_change_runs_against_the_same_base():
    r = whatif(None, ["workload.batch=16", "workload.batch=96"])
    assert [v["change"] for v in r["variants"]] == ["workload.batch=16", "workload.batch=96"]
    assert r["variants"][0]["relative_change"]["tokens_per_s_per_gpu"] < 0 < \
        r["variants"][1]["relative_change"]["tokens_per_s_per_gpu"]


def test_a_change_that_does_not_fit_gets_no_number():
    """The same VRAM check as simulate and plan: batch 128 of the default is 0.9 GiB over budget."""
    r = whatif(None, ["workload.batch=128", "workload.batch=96"])
    over, ok = r["variants"]
    assert over["fits"] is False and over["metrics"] is None and "short by" in over["problem"]
    assert ok["fits"] is True and ok["metrics"]["tokens_per_s_per_gpu"] > r["base"]["tokens_per_s_per_gpu"]
    anyway = whatif(None, ["workload.batch=128"], ignore_memory=True)["variants"][0]
    assert anyway["fits"] is False and "cannot run" in anyway["warnings"][0] and anyway["metrics"]


def test_faster_scale_out_never_slows_a_two_node_step():
    r = whatif(None, ["system.nic_Gbps=800", "system.nic_Gbps=200"])
    faster, slower = (v["metrics"]["step_time_s"] for v in r["variants"])
    assert faster <= r["base"]["step_time_s"] <= slower
    assert slower > r["base"]["step_time_s"]  # halving the NIC must show: its measured share scales too


def test_grouped_changes_apply_together():
    r = whatif(None, ["gpus=32;parallel.ep=32"])
    assert r["variants"][0]["change"] == "gpus=32; parallel.ep=32"


@pytest.mark.parametrize("sets,field", [(["foo"], "--set"), (["system.nvlnk=3"], "system.nvlnk"), ([], "--set")])
def test_bad_changes_name_the_field(sets, field):
    with pytest.raises(MoesimError) as err:
        whatif(None, sets)
    assert err.value.field == field


def test_cli_whatif_json():
    result = CliRunner().invoke(main, ["whatif", "--set", "skew=zipf:1.2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["variants"][0]["metrics"]["step_time_s"] > data["base"]["step_time_s"]
