"""The local backend's parts: replica processes (`replicas.py`) and the Service in front of them (`proxy.py`)."""
