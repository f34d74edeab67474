"""Small apps the real-server tests serve: plain WSGI, Flask, and a Django site (sync and async views).

Every app bills the customer its own authentication resolves (a bearer token mapped to a customer on the
server side, see :mod:`.common`), never a client-supplied customer id.
"""
