"""Evaluating a trained dictionary: reconstruction, sparsity, ground-truth recovery, spliced fidelity."""

from __future__ import annotations

from .ground_truth import max_cosines, mmcs, random_mmcs_baseline, recovery_fraction
from .metrics import ReconstructionStats, evaluate_reconstruction
from .plots import plot_density_histogram
from .report import evaluate_run, format_report
from .splice import spliced_fidelity

__all__ = ["ReconstructionStats", "evaluate_reconstruction", "mmcs", "recovery_fraction", "max_cosines",
           "random_mmcs_baseline", "spliced_fidelity", "plot_density_histogram", "evaluate_run", "format_report"]
