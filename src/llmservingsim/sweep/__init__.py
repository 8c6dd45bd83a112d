"""Sweeps over config grids and capacity planning, on a local process pool or on Ray.

grid.py parses the axes, scenario.py builds each point's config the way ``run --set`` does,
points.py/rows.py turn one simulation into one flat row, store.py keeps sweep.parquet valid
at every flush, executors.py runs the work, plan.py searches rates and resources against SLOs.
"""
