"""The agent call: request and cache key, cache policy, the task, execution, transports, retries."""
