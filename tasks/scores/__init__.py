"""Scores: metric names, metrics and the names of the models they compare, below train/.

Training chooses on the metric (early stopping, the best epoch, the ensemble), evaluation
reports it, promotion and monitoring compare on it: one vocabulary for all of them, kept
below every stage so that none imports another stage's module to learn it.
"""
