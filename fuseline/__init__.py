"""fuseline from Python: predict pandas DataFrames with a trained model, run the pipeline.

    from fuseline import load_model, run

    model = load_model("registry")          # or a bundle directory: load_model("models")
    model.predict(df)                       # a Series of labels (values for regression)
    model.predict_proba(df)                 # a DataFrame, one column per class
    model.predict_table(df)                 # exactly what `fuseline predict` writes
    run("params.yaml")                      # the whole pipeline, as `fuseline run`

Prediction is the code path of `fuseline predict` and the API server
(tasks/serve/served.py), not a copy of it.
"""

from fuseline.model import Model, load_model, run

__all__ = ["Model", "load_model", "run"]
