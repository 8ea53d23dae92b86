"""The optional parts: the Redis bus needs the ``redis`` extra and says so at start; plots need
the ``plots`` extra, and without it the evaluation report keeps its table and says how to
get the pictures. (The suite installs both: their absence is simulated by hiding the module
from ``importlib.util.find_spec``, the one check the code makes.)"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from nba.config import ConfigError, load_settings
from nba.evaluation.estimators import Estimate
from nba.evaluation.report import html_report


def hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == module else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_a_redis_bus_without_the_redis_extra_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings({"bus": "redis://127.0.0.1:6379/0"}, environ={}).redis_bus  # installed: accepted
    hide(monkeypatch, "redis")
    with pytest.raises(
        ConfigError,
        match=r"bus \(--bus, NBA_BUS\): a Redis bus needs the redis package: "
        r"pip install 'nba\[redis\]'",
    ):
        load_settings({"bus": "redis://127.0.0.1:6379/0"}, environ={})
    assert load_settings({"bus": "database"}, environ={}).bus == "database"  # the others need nothing


def test_the_report_without_the_plots_extra_keeps_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    estimates = [Estimate("logged", "ips", 0.25, 0.2, 0.3, 100, 100.0)]
    with_plots = html_report(estimates, [], {"logged": np.zeros(0)}, "a test")
    assert 'src="data:image/png;base64,' in with_plots
    hide(monkeypatch, "matplotlib")
    page = html_report(estimates, [], {"logged": np.zeros(0)}, "a test")
    assert "pip install 'nba[plots]'" in page and "data:image/png" not in page
    assert "logged" in page and "0.2500" in page  # the table is all there
