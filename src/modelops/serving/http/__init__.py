"""The model server's HTTP layer (the only FastAPI/Starlette code of serving/): `create_app` in app.py."""
