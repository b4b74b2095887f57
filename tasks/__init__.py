"""Pipeline steps: plain functions that do the work, and the Prefect tasks that wrap them."""
