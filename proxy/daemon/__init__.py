"""The daemon: the app and its lifecycle (drain, readiness, signals, reload), TLS, memory tuning,
and the demo (the daemon in front of an embedded S3 server)."""
