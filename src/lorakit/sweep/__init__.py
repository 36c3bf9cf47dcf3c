"""`lorakit sweep`: hyperparameter search over any config key with Optuna (space.py: the search space;
study.py: storage, samplers, pruners; worker.py: the trials, each a normal run folder trained in its own process;
trial.py: the child process and its pruning hook; report.py: sweep.md, plots, best_config.yaml, best/)."""
