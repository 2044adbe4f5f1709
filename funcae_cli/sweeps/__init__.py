"""`funcae sweep`: hyperparameter searches on Optuna, the storage being the only thing the workers share.

spec.py (SWEEP.yaml -> SweepSpec), space.py (the distributions), sweepdir.py (runs/<study>/'s file names),
storage.py (storage URLs, connection errors, the turn lock), study.py (the study, its census and one worker's
loop), objective.py (one trial: a run directory trained through run_train, pruned on val_loss), workers.py
(K worker processes on one machine), results.py (leaderboard, best.yaml, Optuna's figures).
"""
