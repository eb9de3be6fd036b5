"""``python3 -m certbot_postfix_tls``: the same as the ``certbot-postfix-tls`` script."""

import sys

from certbot_postfix_tls._internal.cli import main

sys.exit(main())
