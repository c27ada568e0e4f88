"""Several class orders: one full run per order, then the mean ± std of Avg and Last.

The paper reports CIFAR-100 results averaged over three class orders. With
``class_order`` given as a list of orders (a list of lists in an option file),
each order is a separate run with its own run folder ``<date>_<name>_order<i>``
(fresh model, memory and random state, seeded like a single run), and the
aggregate goes to ``<output_basedir>/<dataset>/<setting>/<date>_<name>_orders_summary.json``.
The std is the sample standard deviation (ddof=1), the usual "± over runs".

A list holding one order is that order, run exactly like a plain list.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from continual.config.settings import Settings, settings_from
from continual.method.metrics import mean_and_std
from continual.report.run_log import run_name, write_json
from continual.report.table import orders_report
from continual.runtime.distributed import DistContext, broadcast_object
from continual.train.session import Outcome, train


def listed_orders(cfg: argparse.Namespace) -> list[list[int]] | None:
    """The orders of a list-of-lists ``class_order``; None for one plain order or none."""
    order = cfg.class_order
    if order and isinstance(order[0], list):
        return order
    return None


def config_for_order(cfg: argparse.Namespace, order: list[int], index: int | None) -> argparse.Namespace:
    """A copy of ``cfg`` with one order (the parsed configuration itself is never changed).

    With ``index``, the run name gets ``_order<index>``, so each order has its own folder and
    ``--auto-resume`` finds it.
    """
    name = cfg.name if index is None else (f"{cfg.name}_order{index}" if cfg.name else f"order{index}")
    return argparse.Namespace(**{**vars(cfg), "class_order": list(order), "name": name})


def orders_summary(name: str, orders: list[list[int]], outcomes: list[Outcome]) -> dict:
    """Avg and Last of each order's run, and their mean and sample std over the orders."""
    per_order: list[dict[str, Any]] = [
        {"order": i, "run_dir": str(outcome.run_dir), "avg_acc": outcome.results[-1].avg_acc,
         "last_acc": outcome.results[-1].acc1, "class_order": order}
        for i, (order, outcome) in enumerate(zip(orders, outcomes, strict=True))]
    aggregate: dict = {"name": name, "std": "sample (ddof=1)", "orders": per_order}
    for key in ("avg_acc", "last_acc"):
        mean, std = mean_and_std([o[key] for o in per_order])
        aggregate[key] = {"mean": mean, "std": std}
    return aggregate


def aggregate_path(cfg: argparse.Namespace) -> Path:
    relative = run_name(cfg.data_set, cfg.log_category, cfg.name)
    return Path(cfg.output_basedir) / relative.parent / f"{relative.name}_orders_summary.json"


def settings_per_run(cfg: argparse.Namespace) -> list[Settings]:
    """The settings of each run of the configuration (one per listed class order), all checked before
    the first run starts."""
    orders = listed_orders(cfg)
    if orders is None:
        return [settings_from(cfg)]
    if len(orders) == 1:
        return [settings_from(config_for_order(cfg, orders[0], None))]
    return [settings_from(config_for_order(cfg, order, index)) for index, order in enumerate(orders)]


def run_orders(cfg: argparse.Namespace, runs: list[Settings], ctx: DistContext) -> dict:
    """Train each order's run in turn, then write and print the aggregate (main process)."""
    path = broadcast_object(aggregate_path(cfg))  # rank 0's time stamp
    outcomes = []
    for index, settings in enumerate(runs):
        if ctx.is_main:
            print(f"class order {index + 1} of {len(runs)}", flush=True)
        outcomes.append(train(settings, ctx))
    aggregate = orders_summary(cfg.name, listed_orders(cfg) or [], outcomes)
    if ctx.is_main:
        write_json(path, aggregate)
        print(f"\n{orders_report(aggregate)}\nwritten to {path}", flush=True)
    return aggregate
