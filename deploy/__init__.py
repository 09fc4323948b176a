"""Deployment helpers (not part of the installed packages): rendering configs for loopback stacks."""
