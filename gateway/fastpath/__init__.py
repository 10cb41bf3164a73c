"""The fast traffic path (``traffic_server = "fast"``, issue 13).

Small ``/hooks`` messages to ``http://`` bots are parsed by llhttp (httptools) in an
``asyncio.Protocol`` per connection (:mod:`.connection`, whose docstring states the
framing rules), decided by the rules the aiohttp path uses (:mod:`gateway.traffic_rules`)
and forwarded on keep-alive bot connections (:mod:`.upstream`), the answer streamed back
by callbacks (:mod:`.exchange`). Everything else is handed, on the same connection, to
the aiohttp traffic application.
"""
