"""Enforcement backends the session table drives: network (cgroup BPF), files (BPF LSM)."""
