"""Runs: the run directory (rundir: the one place that knows its file names), checkpoints, a run's data set
and trained model (dataset, trained), and the job behind each command (generate, train, encode, invert,
sample, plot), which writes its results into the run directory and returns what the command reports."""
