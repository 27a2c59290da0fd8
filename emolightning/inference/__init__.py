"""From a trained checkpoint to labels: predict backends, the prediction file, export, ensembles."""
