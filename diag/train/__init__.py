"""Fine-tuning: config, block freezing, trainer and callbacks, runs, sweeps, gradient norms, jobs."""
