"""The ``storagefs`` command line: parsing, user errors, and the commands that talk to a mount."""
