"""Runs over several class orders: each order's configuration, the aggregate summary and its report."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from support import task_result

from continual.config import parse_config
from continual.report.table import orders_report
from continual.train.orders import config_for_order, listed_orders, orders_summary
from continual.train.session import Outcome


def test_orders_summary_and_report() -> None:
    outcomes = [Outcome(Path(f"/runs/x_order{i}"), [task_result(avg_acc=avg, acc1=last)], None)
                for i, (avg, last) in enumerate([(70.0, 55.0), (74.0, 59.0), (72.0, 60.0)])]
    orders = [[0, 1, 2], [2, 1, 0], [1, 0, 2]]
    aggregate = orders_summary("x", orders, outcomes)
    assert aggregate["avg_acc"]["mean"] == pytest.approx(72.0) and aggregate["avg_acc"]["std"] == pytest.approx(2.0)
    assert aggregate["last_acc"]["mean"] == pytest.approx(58.0)
    assert aggregate["last_acc"]["std"] == pytest.approx(math.sqrt((9 + 1 + 4) / 2))
    assert aggregate["orders"][1] == {"order": 1, "run_dir": "/runs/x_order1", "avg_acc": 74.0, "last_acc": 59.0,
                                      "class_order": [2, 1, 0]}
    text = orders_report(aggregate)
    assert text.endswith("over 3 class orders (mean ± sample (ddof=1) std): Avg 72.00 ± 2.00  Last 58.00 ± 2.65")


def test_an_order_config_is_a_copy_with_its_own_name(tmp_path: Path) -> None:
    options = tmp_path / "orders.yaml"
    options.write_text("class_order: [[0, 1, 2], [2, 0, 1]]\n")
    cfg = parse_config(["--options", str(options), "--name", "run"])
    orders = listed_orders(cfg)
    assert orders == [[0, 1, 2], [2, 0, 1]]
    second = config_for_order(cfg, orders[1], 1)
    assert second.class_order == [2, 0, 1] and second.name == "run_order1"
    assert cfg.class_order == [[0, 1, 2], [2, 0, 1]] and cfg.name == "run"  # the parsed config is untouched
    assert config_for_order(cfg, orders[0], None).name == "run"  # a one-order list is that order
    assert listed_orders(parse_config(["--class-order", "1", "0"])) is None
