"""prefect-fanout: parallel LLM-agent work as Prefect 3 flows."""
