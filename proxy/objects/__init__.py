"""Encrypted objects: the view (core), manifests, multipart uploads and the service."""

from proxy.objects.core import read_trailer
from proxy.objects.encrypted import EncryptedService, build_encrypted_service

__all__ = ["EncryptedService", "build_encrypted_service", "read_trailer"]
