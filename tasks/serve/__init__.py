"""Using a trained bundle: batch prediction, promotion to a registry, path checks."""
