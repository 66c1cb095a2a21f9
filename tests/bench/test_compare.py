"""bench.compare: the A B B A blocks, the randomisation test and the verdict it gives."""

import math
import subprocess

import pytest

from bench.common import REPO
from bench.compare import block_ratios, compare, extract_gateway, sign_flip_p


def runs(per_block_cost: list[float]) -> list[float]:
    """One side's figures: two runs per block at that block's cost."""
    return [cost for cost in per_block_cost for _ in range(2)]


def test_a_block_ratio_sets_each_sides_two_runs_against_each_other():
    base = [1.0, 1.2, 2.0, 2.0]
    changed = [1.1, 1.1, 3.0, 1.0]
    assert block_ratios(base, changed) == pytest.approx([2.2 / 2.2, 4.0 / 4.0])


def test_a_steady_drift_within_each_block_cancels():
    """A B B A: a machine slowing steadily from run to run costs both sides alike."""
    cost = [0.5 + 0.025 * k for k in range(4)]  # the four runs of a block, in order
    base = [cost[0], cost[3]] * 6
    changed = [cost[1], cost[2]] * 6
    assert compare(base, changed)["change"] == pytest.approx(0.0)
    alternating = compare([cost[0], cost[2]] * 6, [cost[1], cost[3]] * 6)
    assert alternating["verdict"] == "dearer"  # what A B A B would have concluded


@pytest.mark.parametrize(
    ("log_ratios", "expected"),
    [
        ([0.1, 0.1, 0.1], 2 / 8),  # only all-plus and all-minus are as extreme
        ([0.1] * 8, 2 / 256),
        ([0.1, -0.1], 1.0),
        ([], 1.0),
        ([0.3, 0.1, -0.05], 4 / 8),  # +++, ++-, and their mirror images
    ],
)
def test_sign_flip_p_counts_the_assignments_as_extreme_as_the_observed(log_ratios, expected):
    assert sign_flip_p(log_ratios) == pytest.approx(expected)


def test_a_steady_slowdown_is_called_dearer():
    noise = [1.0, 1.02, 0.98, 1.01, 0.99, 1.03, 0.97, 1.0]
    base = runs([0.5 * n for n in noise])
    changed = runs([0.55 * n for n in reversed(noise)])
    result = compare(base, changed)
    assert result["verdict"] == "dearer"
    assert result["p"] < 0.05
    assert result["change"] == pytest.approx(0.10, abs=0.01)


def test_a_steady_saving_is_called_cheaper():
    base = runs([0.5, 0.52, 0.49, 0.51, 0.5, 0.48])
    changed = runs([0.45, 0.47, 0.44, 0.46, 0.45, 0.43])
    assert compare(base, changed)["verdict"] == "cheaper"


def test_a_change_smaller_than_the_noise_is_not_called():
    base = runs([0.5] * 8)
    changed = runs([0.55, 0.46, 0.54, 0.47, 0.53, 0.48, 0.52, 0.49])
    result = compare(base, changed)
    assert result["verdict"] == "within the noise"
    assert abs(result["change"]) < 0.01
    assert all(math.isfinite(r) for r in result["block_ratios"])


def test_extract_gateway_unpacks_the_committed_service(tmp_path):
    gateway = extract_gateway("HEAD", tmp_path)
    committed = subprocess.run(
        ["git", "-C", str(REPO), "show", "HEAD:services/wechat-gateway/gunicorn.conf.py"],
        capture_output=True,
        check=True,
    ).stdout
    assert (gateway / "gunicorn.conf.py").read_bytes() == committed
    assert (gateway / "wechat_gateway" / "endpoint.py").is_file()


def test_extract_gateway_refuses_an_unknown_revision(tmp_path):
    with pytest.raises(subprocess.CalledProcessError):
        extract_gateway("no-such-revision-anywhere", tmp_path)
