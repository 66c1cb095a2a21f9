"""infra/alertmanager: amtool accepts it, everything reaches the relay, a phone is not flooded."""

from __future__ import annotations

import re
import subprocess

from tests.support.processes import REPO_ROOT, require_binary
from tests.support.promql import ALERTMANAGER_YML, alert_rules, load_yaml

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> int:
    return sum(int(n) * _UNITS_S[u] for n, u in re.findall(r"(\d+)([smhd])", duration))


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = require_binary("amtool", "apt-get install prometheus-alertmanager")
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False)


def test_amtool_check_config_accepts_it():
    result = amtool("check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_severity_is_routed_to_the_relay():
    for severity in ("warning", "critical"):
        result = amtool(
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_YML}",
            "alertname=WeChatLatencyP95High",
            f"severity={severity}",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == "wecom-relay"


def test_grouping_and_intervals_do_not_flood_a_phone():
    route = load_yaml(ALERTMANAGER_YML)["route"]
    assert route["group_by"] == ["alertname"]
    assert seconds(route["group_wait"]) >= 30
    assert seconds(route["group_interval"]) >= 5 * 60
    assert seconds(route["repeat_interval"]) >= 4 * 3600
    for child in route.get("routes", []):
        assert seconds(child.get("repeat_interval", route["repeat_interval"])) >= 4 * 3600


def test_the_receiver_is_the_relay_service_and_resolutions_are_sent():
    config = load_yaml(ALERTMANAGER_YML)
    [receiver] = config["receivers"]
    [webhook] = receiver["webhook_configs"]
    assert webhook["url"] == "http://alert-relay:9095/alertmanager"
    assert webhook["send_resolved"] is True
    compose = load_yaml(REPO_ROOT / "compose.yaml")["services"]
    relay = compose["alert-relay"]
    # the robot's URL carries its key: a secret from the environment, required
    assert re.fullmatch(
        r"\$\{ALERT_WECOM_WEBHOOK_URL:\?.+\}", relay["environment"]["ALERT_WECOM_WEBHOOK_URL"]
    )


def test_inhibitions_name_real_alerts():
    names = {rule["alert"] for rule in alert_rules()}
    for rule in load_yaml(ALERTMANAGER_YML)["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.fullmatch(r'alertname=~?"(.+)"', matcher)
            if match:
                for name in match.group(1).split("|"):
                    assert name in names, f"inhibit rule names unknown alert {name}"
