"""The fallback chain over the remotes, its listing across failover, and the local cache."""
