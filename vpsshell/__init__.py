"""vpsshell: a restricted console shell for tenants of a virtualization host.

The package is split by trust: ``shell`` runs as the (untrusted) tenant and knows only
``protocol``; ``daemon`` runs as root and owns every decision; ``policy`` is a pure engine;
``backends`` drive the hypervisor. Importing this package must stay cheap: ``vpsshell -c``
starts a new process per SSH command.
"""

__version__ = "0.1.0"
