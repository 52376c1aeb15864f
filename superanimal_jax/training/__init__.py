"""Fine-tuning on DeepLabCut projects: config, project, data, targets, metrics, step, loop, export."""
