"""Timeouts, retries and circuit breakers around one backend: the one place that retries."""
