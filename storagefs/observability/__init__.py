"""Health files, telemetry, metric names, logs and secret redaction."""
