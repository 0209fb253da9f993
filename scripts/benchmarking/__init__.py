"""The measuring and reporting behind `scripts/benchmark.py` (not part of the `wdm_bundle` package).

`timing`: medians, peak memory, machine facts and the timed workloads; `measure`: the report's sections;
`targets`: targets met or not and the comparison with a previous run; `report`: Markdown, plot and JSON.
Imported as ``benchmarking`` with ``scripts/`` on ``sys.path`` (as when running ``scripts/benchmark.py``).
"""
