"""The Python client and the `contentd` command line."""
