"""The readable results of a run: typed task and epoch records, the JSON-lines logs, ``summary.json``,
the end-of-run table, PNG plots, TensorBoard scalars and progress bars. Nothing here knows the model."""
