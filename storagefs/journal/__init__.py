"""The durable write journal, its on-disk format and recovery, and the replayer."""
