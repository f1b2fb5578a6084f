"""The vocabulary of dnnlab: errors, dtypes, beta, tables, timing, plots, AMP,
distributed. Imports nothing else of dnnlab, and no Hydra, OmegaConf or W&B."""
