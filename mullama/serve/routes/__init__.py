"""The HTTP routes, one module per area; each only reads the request, calls a service and shapes the answer."""
