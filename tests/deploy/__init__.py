"""Deployment checks: the shipped configs through their real tools, and the stack run on loopback."""
