"""Certbot installer plugin that deploys certificates into Postfix and Dovecot."""

__version__ = "0.1.0"
