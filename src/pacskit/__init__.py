"""pacskit: an extensible PACS framework (asyncio DICOM engine, add-in server, client SCUs)."""

__version__ = "0.1.0"
