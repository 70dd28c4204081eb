"""Cost estimates: replica-hours times the price of each version's instance type."""

from __future__ import annotations

from cvdeploy.monitoring.cost import cost_estimate


def test_priced_and_unpriced_versions():
    versions = {
        "v1": {"instance_type": "Standard_DS3_v2", "replica_hours": 2.0},
        "v2": {"instance_type": "cpu-2", "replica_hours": 0.5},
        "v3": {"instance_type": None, "replica_hours": 1.0},
    }
    cost = cost_estimate(versions, {"Standard_DS3_v2": 0.3, "cpu-2": 0.1})
    assert cost["replica_hours"] == 3.5
    assert cost["by_version"] == {"v1": 0.6, "v2": 0.05, "v3": None}
    assert cost["estimate"] == 0.65
    assert cost["unpriced"] == ["v3"]


def test_no_prices_gives_hours_only():
    cost = cost_estimate({"v1": {"instance_type": "x", "replica_hours": 1.5}}, {})
    assert cost["estimate"] is None
    assert cost["replica_hours"] == 1.5
