"""Reconciliation: copying to the secondary what it lacks of the primary."""
