"""`llmctl serve`: an OpenAI-compatible router in front of the managed llama-server.

Imported only by the serve command: it pulls in Starlette, uvicorn and httpx.
`create_app(manifest, supervisor)` in `llmctl.router.app` builds the ASGI app.
"""
