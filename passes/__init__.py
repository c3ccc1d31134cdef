"""rocm_attn.passes: the FX passes, the pass manager, graph dumps and the rewrite report."""

from .pass_manager import PASSES, run_passes
from .report import GraphReport, Report, Site

__all__ = ["PASSES", "GraphReport", "Report", "Site", "run_passes"]
