"""``storagefs download``: bulk copy of a folder out of the bucket, with progress and resume."""
