"""The Redis layer: every key (``keys``), the Lua scripts of ``meter/lua`` (``scripts``),
the client (``client``), replicated writes (``durability``) and billing periods
(``periods``). The bottom floor of ``meter`` next to ``store``: it imports neither."""
