"""Pure-PyTorch models: pretrained encoders, fusion heads and the registry that names them.

Nothing here knows about Prefect, DVC or the pipeline's files.
"""
