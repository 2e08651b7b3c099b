"""Mean ± std over folds x seeds, with what backs every number, as dicts and as Markdown tables.

A *row* is one evaluation of one trained run: the labels that identify it (``model``, ``train``, ``test``, ``task``,
...), ``fold`` and ``seed``, metric values (``macro_f1``, ``accuracy``, ...) and ``n_patients`` / ``n_images`` of the
test set it was scored on. Rows sharing the values of ``group_by`` form one cell:

- mean and sample standard deviation (ddof 1) of the metric over the cell's runs (``std`` is None for one run);
- ``n_runs``: how many runs (folds x seeds);
- ``n_patients`` / ``n_images``: the distinct test patients / images behind the cell. The test folds of patient
  k-fold cross-validation are disjoint, and seeds repeat a fold's test set, so this is the sum over the cell's
  folds of one run's test set (with the store's own split, fold is always 0: one test set).

Cells print as ``0.812 ± 0.034 (n=10; 82 p / 7909 i)``: n = runs, p = patients, i = images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from histo_bench.markdown import markdown_table

#: What the cells mean, for captions under the tables.
CELL_NOTE = ("Cells: mean ± std over folds x seeds (sample std; '± n/a' for a single run); n = runs, p / i = "
             "distinct test patients / images behind the cell.")


def _key(row: dict[str, Any], group_by: Sequence[str]) -> tuple:
    return tuple(row.get(k) for k in group_by)


def _value(row: dict[str, Any], metric: str) -> float | None:
    v = row.get(metric)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def summarize(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """mean, std, n_runs, n_patients, n_images of ``metric`` over ``rows`` (see the module docstring)."""
    values = [v for r in rows if (v := _value(r, metric)) is not None]
    per_fold: dict[Any, tuple[int, int]] = {}
    for r in rows:
        if _value(r, metric) is None:
            continue
        fold = r.get("fold", 0)
        p, i = int(r.get("n_patients") or 0), int(r.get("n_images") or 0)
        old = per_fold.get(fold, (0, 0))
        per_fold[fold] = (max(old[0], p), max(old[1], i))
    return {"mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n_runs": len(values),
            "n_patients": sum(p for p, _ in per_fold.values()),
            "n_images": sum(i for _, i in per_fold.values())}


def aggregate(rows: Iterable[dict[str, Any]], group_by: Sequence[str], metric: str) -> list[dict[str, Any]]:
    """One dict per group of ``rows`` (first-seen order): the ``group_by`` values plus :func:`summarize`."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r, group_by), []).append(r)
    return [{**dict(zip(group_by, key, strict=True)), "metric": metric, **summarize(members, metric)}
            for key, members in groups.items()]


def format_cell(summary: dict[str, Any] | None, digits: int = 3, signed: bool = False) -> str:
    """``mean ± std (n=runs; p p / i i)``; ``-`` for an empty cell."""
    if not summary or summary.get("mean") is None:
        return "-"
    fmt = f"{{:{'+' if signed else ''}.{digits}f}}"
    std = "n/a" if summary["std"] is None else f"{summary['std']:.{digits}f}"
    return (f"{fmt.format(summary['mean'])} ± {std} (n={summary['n_runs']}; {summary['n_patients']} p / "
            f"{summary['n_images']} i)")


def mean_std_table(rows: Sequence[dict[str, Any]], group_by: Sequence[str], metrics: Sequence[str], *,
                   labels: dict[str, str] | None = None, digits: int = 3, signed: Sequence[str] = ()) -> str:
    """A Markdown table: one line per group of ``group_by``, one ``mean ± std (n=...)`` column per metric.

    ``labels`` renames columns (metric or key -> header); metrics in ``signed`` print with a sign (differences).
    """
    labels = labels or {}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(_key(r, group_by), []).append(r)
    body = [[*key, *(format_cell(summarize(members, m), digits, m in signed) for m in metrics)]
            for key, members in groups.items()]
    return markdown_table([labels.get(c, c) for c in (*group_by, *metrics)], body,
                          "l" * len(group_by) + "r" * len(metrics))


def mean_std_matrix(rows: Sequence[dict[str, Any]], row_key: str, col_key: str, metric: str, *,
                    corner: str | None = None, digits: int = 3,
                    rows_order: Sequence[Any] | None = None, cols_order: Sequence[Any] | None = None) -> str:
    """A Markdown matrix (e.g. train x test magnification) of ``mean ± std (n=...)`` cells of ``metric``."""
    r_vals = list(rows_order or dict.fromkeys(r.get(row_key) for r in rows))
    c_vals = list(cols_order or dict.fromkeys(r.get(col_key) for r in rows))
    body = [[rv, *(format_cell(summarize([r for r in rows if r.get(row_key) == rv and r.get(col_key) == cv], metric),
                               digits) for cv in c_vals)] for rv in r_vals]
    return markdown_table([corner or f"{row_key} \\ {col_key}", *c_vals], body, "l" + "r" * len(c_vals))


def mean_grid(rows: Sequence[dict[str, Any]], row_key: str, col_key: str, metric: str, rows_order: Sequence[Any],
              cols_order: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) arrays (NaN where empty / single run) of ``metric`` over ``rows_order`` x ``cols_order``."""
    mean = np.full((len(rows_order), len(cols_order)), np.nan)
    std = np.full_like(mean, np.nan)
    for i, rv in enumerate(rows_order):
        for j, cv in enumerate(cols_order):
            s = summarize([r for r in rows if r.get(row_key) == rv and r.get(col_key) == cv], metric)
            if s["mean"] is not None:
                mean[i, j] = s["mean"]
                std[i, j] = s["std"] if s["std"] is not None else np.nan
    return mean, std


def paired(rows: Sequence[dict[str, Any]], by: Sequence[str], derive: Callable[[dict[Any, dict]], dict | None],
           key: str | Sequence[str]) -> list[dict[str, Any]]:
    """Derived rows, one per (``by`` values, fold, seed), e.g. a difference between two cells of one run.

    ``derive`` gets that group's rows indexed by ``row[key]`` (a tuple of values when ``key`` is a sequence) and
    returns the derived metrics, or None to skip the group. Unless it returns ``n_patients`` / ``n_images`` itself,
    a derived row gets the largest patient count and the summed image count of the group's rows.
    """
    def index(r: dict[str, Any]) -> Any:
        return r.get(key) if isinstance(key, str) else tuple(r.get(k) for k in key)

    groups: dict[tuple, dict[Any, dict]] = {}
    for r in rows:
        groups.setdefault((*_key(r, by), r.get("fold", 0), r.get("seed", 0)), {})[index(r)] = r
    out = []
    for gkey, members in groups.items():
        values = derive(members)
        if values is None:
            continue
        n = {"n_patients": max(int(m.get("n_patients") or 0) for m in members.values()),
             "n_images": sum(int(m.get("n_images") or 0) for m in members.values())}
        out.append({**dict(zip((*by, "fold", "seed"), gkey, strict=True)), **n, **values})
    return out
