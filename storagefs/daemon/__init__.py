"""The mount daemon: assembling the stack, the FUSE adapter, serving until unmounted."""
