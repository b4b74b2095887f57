"""Using a trained bundle: batch prediction, the champion comparison, promotion to a registry."""
