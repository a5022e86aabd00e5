"""The project's Xen lab: Xen 4.17 with a Debian dom0, booted in QEMU (TCG) for the tests.

Built only from Debian packages (debian.py: debootstrap and apt from this machine's mirror),
configured by this package's own files (images.py, files/), cached between runs in
``/var/tmp/vpsshell-xenlab`` (``VPSSHELL_XENLAB_CACHE``) and run by machine.py. As a command,
as root: ``python3 tests/xen/lab build | boot | ssh [CMD] | console | status | stop | clean``
(see __main__.py). The tests (tests/xen/conftest.py) use ``ensure_images`` and ``Machine``.
It never reaches anything but the Debian mirror, and the booted lab reaches nothing at all.
"""

from .images import Images, ensure_images
from .machine import Machine, preflight

__all__ = ["Images", "Machine", "ensure_images", "preflight"]
