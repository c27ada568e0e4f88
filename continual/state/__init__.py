"""What survives a restart: the typed run state (``run_state``), the files of saved run states
(``saved_runs``), the task checkpoints and memory files (``checkpoints``), and loading the
published code's checkpoints (``reference``)."""
