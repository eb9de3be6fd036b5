# certbot-postfix-tls: while a renewal is held back for its TLSA records (DANE), look
# them up hourly and put it into service once they are published. Systems running
# systemd use certbot-postfix-tls-dane.timer instead, so this entry does nothing there.
SHELL=/bin/sh
PATH=/usr/local/sbin:/usr/local/bin:/sbin:/bin:/usr/sbin:/usr/bin

23 * * * * root test ! -d /run/systemd/system && test -e /etc/letsencrypt/postfix-tls/dane-held && certbot-postfix-tls dane check 2>&1 | logger -t certbot-postfix-tls
