"""The seed-study suites (``histo-bench suite NAME``): the framework in :mod:`benchmark.suites.base`, one module
per suite. Importing this package registers every suite into :data:`SUITES`; a new suite adds its module to the
import line below. It imports torch and the recipes: the CLI imports it only inside ``suite``."""

from benchmark.suites import (  # noqa: F401  (register the suites)
    fusion_inputs,
    magnification_transfer,
    mil_slides,
    mpcs,
    transfer,
)
from benchmark.suites.base import (
    SUITES,
    SuiteContext,
    SuiteSpec,
    is_suite_results,
    load_results,
    rebuild_report,
    register_suite,
    run_suite,
)
from benchmark.suites.report import write_suite_report
from benchmark.suites.study import QUICK, StudyConfig
from benchmark.suites.tables import aggregate, format_cell, mean_std_matrix, mean_std_table, paired, summarize

__all__ = ["QUICK", "SUITES", "StudyConfig", "SuiteContext", "SuiteSpec", "aggregate", "format_cell",
           "is_suite_results", "load_results", "mean_std_matrix", "mean_std_table", "paired", "rebuild_report",
           "register_suite", "run_suite", "summarize", "write_suite_report"]
