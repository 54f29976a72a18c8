"""What runs in the agent's process (before exec) and the `corral` CLI."""
