"""The content store: blobs by digest and ingests by ref, for the daemon and daemonless clients."""
