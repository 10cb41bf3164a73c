"""The usage pipeline: the flusher with its claims and batches from Redis to the store,
usage series and live sessions, the usage breakdown, export and reconciliation."""
