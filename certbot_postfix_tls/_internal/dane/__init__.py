"""DANE (RFC 7672): never put into service a chain the published TLSA records don't match.

Senders that validate DANE look up ``_25._tcp.MX-HOST`` TLSA and refuse (defer)
mail when the certificate Postfix serves matches none of the records. A
renewal with a new key, or a new Let's Encrypt intermediate under ``2 1 1``,
does exactly that until someone fixes DNS by hand. So every time the pipeline
loads a lineage's files to put them into service (``pipeline.render``), it asks
``gate.choose_material`` which material to serve, given the lookups the
operation made before rendering (``ops/render.py``):

- the TLSA records of the names senders use (``names``: the certificate's, wildcards
  as the names they cover, ``myhostname``, the MX hosts pointing here, and
  ``--postfix-tls-dane-names``), on every port Postfix serves among 25, 465 and 587,
  are looked up through the system resolver (or ``--postfix-tls-dane-resolver``) with
  DNSSEC requested. Signed records are obeyed whether or not the resolver validated
  them (senders' resolvers do); records of an unsigned zone are reported, not obeyed.
- usable records (usages 3 and 2, selectors 0/1, matching types 0/1/2) that the new
  chain does not match, or a lookup that failed, *hold* the lineage: Postfix keeps
  serving the archive version it serves now, the state records the hold, and the
  records to publish are printed.
- a held lineage is activated once a record matching the new chain has been seen for
  twice the record set's signed TTL, the largest since the hold began (every cached
  copy of the old set has expired by then): ``certbot-postfix-tls dane check`` (hourly
  timer while anything is held) and every post hook re-check.
- ``history`` keeps the newest version in service outside certbot's checkpoints, so a
  rollback never serves an older key.

``--postfix-tls-dane ignore`` turns all of this off for a lineage.

Modules, lowest first: ``archive`` (a lineage's archive versions), ``records``
(TLSA records, owner names, the rollover set), ``lookup`` (the resolver), ``names``
(the names senders use), ``history`` (the newest version in service),
``report`` (what to tell: held, verify and doctor findings), ``gate`` (the
pure decision), ``update`` (RFC 2136), ``flag`` (the Debian timer's condition).
"""
