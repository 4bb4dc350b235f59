"""The agent call as a Prefect task.

Cache key and policy, locks, the task, the call window and the recording brake.
"""
