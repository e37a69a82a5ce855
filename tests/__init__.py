"""prunekit's tests, laid out like src/prunekit: tests/<package>/test_<module>.py, top-level modules in
tests/test_<module>.py, cross-cutting faults in tests/hardening/. Packages, so that equal basenames coexist."""
