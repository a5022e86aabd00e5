"""``vpsshell-web``: the console in a browser, over HTTPS and a WebSocket, for one-time links.

It runs as an unprivileged user of its own and decides nothing about anyone: a browser brings a
console link's token, the service hands it to the helper over the helper's web socket (open to
this service's user only), and relays the console the helper then runs as the user who minted
the link. Needs the optional ``web`` extra (aiohttp); ``vpsshell -c`` never imports it.
"""
