"""Helpers shared by tests and benchmarks: private servers, containerd's tools, the Go suite."""
