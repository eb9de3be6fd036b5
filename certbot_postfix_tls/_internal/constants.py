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

# The configuration files certbot reads before its command line, in this order
# (``certbot --help`` lists them): ``plan`` takes the --postfix-tls-* settings in them,
# as certbot install does. The second is under $XDG_CONFIG_HOME (default ~/.config).
CERTBOT_CONFIG_FILE = "/etc/letsencrypt/cli.ini"
CERTBOT_USER_CONFIG_FILE = ("letsencrypt", "cli.ini")

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

# Where passwords travel, nothing older than TLS 1.2 (RFC 8996, RFC 8314): the
# submission services' mandatory protocols, and what doctor and deploy notes expect.
MODERN_TLS = ("TLSv1.2", "TLSv1.3")

# Postfix's and Dovecot's built-in directories, used when their configuration
# does not say (queue_directory, config_directory, base_dir).
POSTFIX_CONFIG_DIR = "/etc/postfix"
POSTFIX_QUEUE_DIR = "/var/spool/postfix"
DOVECOT_BASE_DIR = "/run/dovecot"

# DANE (dane/): the activation history, kept outside certbot's checkpoints so that a
# rollback never serves a key older than one already in service.
DANE_HISTORY_FILE = "dane-history.json"
# Expiry, judged against the certificate's own lifetime (expiry.py). certbot (>= 4.0)
# renews when a third of the lifetime is left, half below ten days of lifetime.
RENEW_SHARE = 1 / 3
RENEW_SHARE_SHORT = 1 / 2
SHORT_LIFETIME_DAYS = 10
# WARNING when less than this share of the lifetime is left (certbot should have renewed
# long before), at most WARN_DAYS: a 90-day certificate warns at 14 days, as it always did.
WARN_SHARE = 14 / 90
WARN_DAYS = 14
# CRITICAL when less than this share is left (about to expire), at most CRITICAL_DAYS.
CRITICAL_SHARE = 3 / 90
CRITICAL_DAYS = 3
# The lifetime assumed when a certificate's start is unknown (a state written before it
# was recorded): Let's Encrypt's long-standing 90 days.
DEFAULT_LIFETIME_DAYS = 90

# Let's Encrypt's profiles for short-lived certificates (160 hours: shortlived; 45 days:
# tlsserver) accept at most this many names per certificate; a renewal configuration
# naming one (preferred_profile/required_profile) for a larger lineage cannot renew.
SHORT_PROFILES = ("shortlived", "tlsserver")
SHORT_PROFILE_MAX_NAMES = 25
