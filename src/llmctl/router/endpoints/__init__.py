"""The router's HTTP endpoints, one module per surface; `app.py` routes to them."""
