"""vpsshelld, the privileged helper: the only part of vpsshell that is trusted.

It identifies callers by socket peer credentials, authorizes every request against the policy,
drives the backend, and writes the audit log. It never runs a shell and never puts a tenant's
string on a command line.
"""
