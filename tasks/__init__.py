"""Pipeline steps: plain functions that do the work, and the Prefect tasks that wrap them."""

from tasks.escape import escape_log_arguments

escape_log_arguments()
