"""The embedded Triton launcher and the one-command local stack."""
