"""The data plane: an ASGI app serving one model version over every protocol."""
