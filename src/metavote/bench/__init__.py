"""The evaluation harness (``harness.py``: bench, rows, summaries), the ablations (``ablations.py``),
their figures (``plots.py``) and the FLOPs ratio at equal accuracy both use (``ratios.py``, below
them both: ``ablations`` imports ``harness``, and both import ``ratios``)."""

from .ablations import (
    ablate_budget, ablate_decomposition, ablate_groups, ablate_head, ablate_iterations, ablate_neighbours,
    ablate_recipe, ablate_task_size, ablate_unseen, ablate_zoos, neighbour_overlap, ranked_pool, zoo_names, zoo_summary,
)
from .harness import (
    BenchContext, RowLog, bench, bench_tasks, main_methods, markdown_table, one_off_costs, pipeline_families, ratio_notes, run_variants, size_notes,
    summarize, write_table,
)
from .plots import plot_ablation, plot_budget
from .ratios import flops_ratio

__all__ = [
    "BenchContext", "RowLog", "ablate_budget", "ablate_decomposition", "ablate_groups", "ablate_head", "ablate_recipe", "flops_ratio",
    "neighbour_overlap", "plot_budget", "ablate_iterations", "ablate_neighbours", "ablate_task_size",
    "ablate_unseen", "ablate_zoos", "bench", "bench_tasks", "main_methods", "markdown_table", "one_off_costs", "pipeline_families", "plot_ablation", "ratio_notes", "ranked_pool", "run_variants", "size_notes",
    "summarize", "write_table", "zoo_names", "zoo_summary",
]
