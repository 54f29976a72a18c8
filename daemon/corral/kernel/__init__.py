"""Talking to the kernel: cgroups, BPF records, headers, probes, the native extension."""
