"""The gRPC daemon: containerd's Content service over a content store."""
