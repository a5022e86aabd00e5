"""The tenant's shell: a UI over the helper's socket, running as the (untrusted) tenant.

Nothing here is a security boundary; the helper re-checks everything. The shell checks input
only to give good errors early. It never runs a subprocess, never calls a shell and never
evaluates input: its grammar is closed (``grammar``) and its verbs are a fixed registry
(``commands``).
"""
