"""DANE (RFC 7672): never put into service a chain the published TLSA records don't match.

Senders that validate DANE look up ``_25._tcp.MX-HOST`` TLSA and refuse (defer)
mail when the certificate Postfix serves matches none of the records. A
renewal with a new key, or a new Let's Encrypt intermediate under ``2 1 1``,
does exactly that until someone fixes DNS by hand. So every time the pipeline
loads a lineage's files to put them into service (``pipeline.render``), it asks
``gate.choose_material`` which material to serve, given the lookups the
operation made before rendering (``ops/render.py``):

- the TLSA records of every name of the lineage, on every port Postfix serves
  among 25, 465 and 587, are looked up through the system resolver (or
  ``--postfix-tls-dane-resolver``) with DNSSEC requested; an answer counts only
  when the resolver validated it (AD bit), as DANE clients do. Unsigned records
  are reported, not obeyed. A failed lookup never blocks anything by itself.
- validated, usable records (usages 3 and 2, selectors 0/1, matching types
  0/1/2) that the new chain does not match *hold* the lineage: Postfix keeps
  serving the archive version it serves now, the state records the hold, and
  the records to publish are printed.
- a held lineage is activated once a validated record matching the new chain
  has been seen for twice its TTL (every resolver's cached copy of the old
  record set has expired by then): ``certbot-postfix-tls dane check`` (hourly
  timer while anything is held) and every post hook re-check.

``--postfix-tls-dane ignore`` turns all of this off for a lineage.

Modules, lowest first: ``archive`` (a lineage's archive versions), ``records``
(TLSA records, owner names, the rollover set), ``lookup`` (the resolver),
``report`` (what to tell: held, verify and doctor findings), ``gate`` (the
pure decision), ``update`` (RFC 2136), ``flag`` (the Debian timer's condition).
"""
