"""The search service (FastAPI + uvicorn) and its web page; imported only by ``stitch serve``."""
