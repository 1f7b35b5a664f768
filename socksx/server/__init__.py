"""The gevent server: listeners, sessions, one module per command family."""
