"""What the proxy does to an object: the service (``service``) and the code for each kind of key."""

from proxy.objects.service import ObjectService, build_service

__all__ = ["ObjectService", "build_service"]
