"""The daemon: the app and its lifecycle (drain, readiness, signals, reload), TLS, memory tuning."""
