"""Running events: the dispatcher (retries, dead letters, success markers), batches,
invocation records and usage metering."""
