"""The unit tier: pure logic (policy parsing and normalisation, narrowing, the log
chain, DNS names, rule merging, audit record parsing). No root, no BPF, no daemon:
it runs as any user in seconds (`make unit`; tests/test_unit_tier.py runs it as
nobody). A package, so its modules may share a name with the kernel tier's."""
