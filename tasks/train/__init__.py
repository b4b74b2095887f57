"""Training fusion heads on the feature files, and the model bundle they are saved as."""
