"""Where events come in: connector sinks, the durable inbox, the router, schedules, the S3
catch-up scan and the source cursors."""
