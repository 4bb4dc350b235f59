"""The Prefect UI as the trace: artifacts, progress, trace files."""
