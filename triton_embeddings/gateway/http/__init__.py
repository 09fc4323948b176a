"""The HTTP room: routes, middleware, server, wire types, and wire <-> domain conversion."""
