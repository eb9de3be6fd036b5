"""Defaults and fixed names, in one place (the CLI_DEFAULTS pattern of certbot's
own installer plugins): option defaults, where the plugin keeps its files, and
the names of what it installs."""

from __future__ import annotations

# Defaults of the --postfix-tls-* options and of the certbot-postfix-tls command.
CLI_DEFAULTS = {
    "config_dir": "/etc/letsencrypt",
    "work_dir": "/var/lib/letsencrypt",
    "dovecot_config": "/etc/dovecot/dovecot.conf",
    "key_group": "ssl-cert",  # Debian's convention (package ssl-cert)
    "verify_address": "127.0.0.1",
    "dovecot_sessions": "cut",  # Dovecot's own behaviour: a reload ends IMAP/POP3 sessions
}

# <config-dir>/postfix-tls/: everything the plugin owns under certbot's directory.
PLUGIN_DIR = "postfix-tls"
STATE_FILE = "state.json"  # what was deployed; no key material (readable by monitoring)
LOCK_FILE = "lock"  # one writer at a time: install, hooks, undeploy, rollback
LINEAGES_DIR = "lineages"  # derived key+chain files, 0700
CHAIN_FILE = "key-fullchain.pem"
SNI_MAP_FILE = "sni-map"
INSTANCES_DIR = "instances"  # per extra Postfix instance: its own state and SNI table
# One empty file per renewed lineage whose deploy hook has not finished: written before
# anything that can fail (the lock, a configuration read), removed once a state's
# pending marks record the renewal.
RENEWALS_DIR = "renewals"

# Seconds a second writer waits for the lock before giving up with one sentence.
LOCK_TIMEOUT = 120.0

# Seconds verification waits at most for Postfix's master to lift a throttle
# (service_throttle_time, 60 s by default) before handshaking.
THROTTLE_WAIT_MAX = 90.0

# Where syslog puts mail logs when a daemon has no log file of its own.
SYSLOG_MAIL = "/var/log/mail.log"

# Name of the renewal hook files under <config-dir>/renewal-hooks/{deploy,post}/.
HOOK_NAME = "certbot-postfix-tls"

# The public SMTP ports: mail servers (25), mail clients with STARTTLS (587, RFC 6409)
# and with implicit TLS (465, RFC 8314). Never taken for internal listeners; where
# Postfix's certificate meets DANE senders.
SMTP_PORT = 25
SMTPS_PORT = 465
SUBMISSION_PORT = 587
PUBLIC_SMTP_PORTS = (SMTP_PORT, SMTPS_PORT, SUBMISSION_PORT)

# Postfix's and Dovecot's built-in directories, used when their configuration
# does not say (queue_directory, config_directory, base_dir).
POSTFIX_CONFIG_DIR = "/etc/postfix"
POSTFIX_QUEUE_DIR = "/var/spool/postfix"
DOVECOT_BASE_DIR = "/run/dovecot"
