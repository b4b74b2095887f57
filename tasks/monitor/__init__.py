"""Drift monitoring: does a new batch of rows still look like the rows the model was trained on?

One module per job:

    statistics   two-sample tests and effect sizes on plain arrays (numeric, categorical,
                 missing share, unseen categories)
    domain       the embedding test: can a classifier tell batch vectors from reference ones?
    checks       a test's result judged against `monitor.threshold` (the Check record), and
                 the Holm adjustment that makes `alpha` the false-alarm rate of a whole run
    tabular      statistics applied to the declared numeric and categorical columns
    embeddings   text/image/audio vectors through the encoders and the row-level cache
    predictions  the model's predicted classes and scores on both sides
    rows         where the two sides come from: the served model, its train rows (its lineage),
                 and a file or the source rows it has never seen
    schema       columns added, removed or retyped since the model was trained, as findings
    report       drift.json, drift.md, drift.png and the Prefect table rows
    performance  the model's primary metric on a batch: realized on the labelled rows (with
                 its bootstrap interval), estimated from calibrated probabilities (CBPE)
    history      performance.json (one record per run) and performance.png over time

Why scipy.stats (and scikit-learn's linear algebra) rather than Evidently, NannyML or
alibi-detect: the tests these libraries run by default for data of our size are the same
scipy.stats tests used here (Evidently: Kolmogorov-Smirnov for numeric columns and
chi-squared for categorical ones below 1,000 rows; a domain classifier's ROC AUC, threshold
0.55, for embeddings). What they would add is their own report format, dashboards and a
large dependency tree (Evidently pulls in plotly, nltk and its own pydantic models; NannyML
pins pandas and numpy ranges; alibi-detect brings TensorFlow or its own torch stack), while
this project already publishes to Prefect and needs the embeddings from its own encoders
and cache, which none of them computes. scipy and scikit-learn are already dependencies. The
pieces written here are a few lines each: the population stability index, a Good-Turing
expectation for unseen categories, Holm's adjustment, and an out-of-fold linear domain
classifier whose p-value is calibrated by permuting the labels (see domain.py for why not
the Mann-Whitney p-value of pooled out-of-fold scores).
"""
