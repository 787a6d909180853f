"""Tools for tests and development (emulators, fault proxy); not used by the daemon."""
