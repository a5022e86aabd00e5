"""``vpsshell-admin``: the administrator's tools (policy checks, reload, installing the shell)."""
