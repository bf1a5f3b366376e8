"""The workflow: pipeline spec, parameter contracts, execution, executors, run database."""
