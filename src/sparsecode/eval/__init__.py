"""Evaluating a trained dictionary: reconstruction, sparsity, ground-truth recovery, spliced fidelity."""

from __future__ import annotations

from .ground_truth import max_cosines, mmcs, random_mmcs_baseline, recovery_fraction
from .metrics import ReconstructionStats, evaluate_reconstruction
from .plots import plot_density_histogram
from .report import evaluate_run, format_report
from .splice import spliced_fidelity

__all__ = [
    "ReconstructionStats",
    "evaluate_reconstruction",
    "evaluate_run",
    "format_report",
    "max_cosines",
    "mmcs",
    "plot_density_histogram",
    "random_mmcs_baseline",
    "recovery_fraction",
    "spliced_fidelity",
]
