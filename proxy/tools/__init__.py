"""Operator commands that run without the daemon: offline file tools, verify-bucket, abort-stale-uploads."""
