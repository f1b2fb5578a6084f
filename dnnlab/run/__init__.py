"""Around one job: run_job, config and settings, Hydra's view and the sweep dir, the
run dir (lock, results.json), tracking (W&B + names), models from specs, the
report, the CLI. Imports the topics; they never import it."""
