"""Training: one epoch (``epoch``), one phase of a task (``fit``), the task loop (``loop``), a whole
run and ``--eval`` (``session``), the run folder and resuming it (``run_folder``), one run per class
order (``orders``), the optimiser and the schedule (``optim``), the loaders (``loaders``)."""
